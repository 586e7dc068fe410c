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

	ar, other := p.get(), p.get()
	if other == ar {
		t.Error("the free list handed out an arena twice")
	}
	p.put(other)
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
	if p.get() != other {
		t.Error("the arena given back first was not handed out first")
	}
}

// An arena whose batches shrink lets go of what they no longer take (and
// so does every arena of the free list, each serving batches in turn):
// after a burst, the garbage collector does not scan its large chunks at
// every collection.
func TestArenaLetsGoAfterABurst(t *testing.T) {
	var p arenas
	batch := func(n int) {
		a, b := p.get(), p.get() // two partitions a batch
		for _, ar := range []*arena{a, b} {
			for range n {
				ar.outs = append(ar.outs, output{r: ar.record()})
				ar.headerSlice(5)
			}
		}
		p.put(a)
		p.put(b)
	}
	kept := func() (recs, headers, outs int) {
		for _, ar := range p.free {
			for _, ch := range ar.recs.free {
				recs += cap(ch)
			}
			for _, ch := range ar.headers.free {
				headers += cap(ch)
			}
			outs += cap(ar.outs)
		}
		return
	}
	batch(10000)
	if recs, headers, outs := kept(); recs < 20000 || headers < 100000 || outs < 20000 {
		t.Fatalf("after the burst %d records, %d headers and %d outputs kept, want room for the burst's", recs, headers, outs)
	}
	for range 400 {
		batch(10)
	}
	if recs, headers, outs := kept(); recs > 2*64 || headers > 2*5*64 || outs > 2*32 {
		t.Errorf("after small batches %d records, %d headers and %d outputs kept, want one small chunk each", recs, headers, outs)
	}
}
