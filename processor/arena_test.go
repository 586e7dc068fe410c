package processor

import (
	"testing"
	"unsafe"

	"github.com/twmb/franz-go/pkg/kgo"
)

// An arena given back is handed out again with every one of its chunks, so
// that a batch as large as an earlier one allocates nothing; chunks past
// the bound are let go.
func TestArenaReuse(t *testing.T) {
	var p arenas
	batch := func() {
		ar := p.get()
		for range 1000 { // several chunks of records
			ar.record()
			ar.headerSlice(10)
			ar.buf(100)
		}
		p.put(ar)
	}
	batch()
	if allocs := testing.AllocsPerRun(10, batch); allocs != 0 {
		t.Errorf("a batch as large as the one before made %v allocations, want 0", allocs)
	}

	ar := p.get()
	if p.get() == ar {
		t.Error("the free list handed out an arena twice")
	}
	for range 100000 { // 100k records: far past arenaKeepBytes
		ar.record()
	}
	p.put(ar)
	kept := 0
	for _, ch := range ar.recs.free {
		kept += cap(ch) * int(unsafe.Sizeof(kgo.Record{}))
	}
	if kept == 0 || kept > arenaKeepBytes {
		t.Errorf("%d bytes of records kept, want some and at most %d", kept, arenaKeepBytes)
	}
	if len(ar.bytes.free) == 0 || len(ar.headers.free) == 0 {
		t.Error("chunks within the bound were let go")
	}
	if p.get() != ar {
		t.Error("the arena given back last was not handed out first")
	}
}
