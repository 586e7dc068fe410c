package processor

import "testing"

// An arena given back is handed out again with its chunks, except those
// grown past the bound, which are let go.
func TestArenaReuse(t *testing.T) {
	var p arenas
	ar := p.get()
	small := ar.record()
	ar.headerSlice(10)
	ar.buf(100)
	p.put(ar)
	again := p.get()
	if again != ar {
		t.Fatal("an arena given back was not handed out again")
	}
	if r := again.record(); r != small {
		t.Error("the records chunk was not reused")
	}
	for range 100000 { // 100k records: far past arenaKeepBytes
		again.record()
	}
	again.buf(arenaMaxBuf)
	p.put(again)
	if again.recs != nil {
		t.Errorf("a records chunk of %d records was kept", cap(again.recs))
	}
	if again.bytes == nil || again.headers == nil {
		t.Error("chunks within the bound were let go")
	}
	if p.get() != again || p.get() == again {
		t.Error("the free list handed out an arena twice or lost it")
	}
}
