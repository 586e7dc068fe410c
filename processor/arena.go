package processor

import (
	"sync"
	"unsafe"

	"github.com/twmb/franz-go/pkg/kgo"
)

// arena hands out what one partition's batch produces and forgets once the
// batch is over: the records, their header slices, and bytes (ids, snapshot
// values). Allocating them one by one was a third of the worker's garbage;
// an arena is reused by a later batch once every record of its batch is
// acknowledged (franz-go does not touch a record after its promise) and
// its overlay is written. Nothing taken from it outlives the batch: the
// states decided in a batch live in its overlay, and the state cache and
// Pebble keep copies of the snapshots.
//
// An arena is used by one goroutine at a time. Each kind is one chunk; a
// chunk that fills up is replaced by one twice as large, and the full one
// is left to the records that point into it.
type arena struct {
	recs    []kgo.Record
	headers []kgo.RecordHeader
	bytes   []byte
}

// Bounds of what an arena keeps for the next batch, and of one buf.
const (
	arenaKeepBytes = 4 << 20
	arenaMaxBuf    = 64 << 10
)

// reset makes the arena's chunks reusable: call it only once nothing from
// them is referenced any more. A chunk grown past arenaKeepBytes is let go,
// so that one large batch does not stay in memory.
func (ar *arena) reset() {
	ar.recs, ar.headers, ar.bytes = ar.recs[:0], ar.headers[:0], ar.bytes[:0]
	if cap(ar.recs)*int(unsafe.Sizeof(kgo.Record{})) > arenaKeepBytes {
		ar.recs = nil
	}
	if cap(ar.headers)*int(unsafe.Sizeof(kgo.RecordHeader{})) > arenaKeepBytes {
		ar.headers = nil
	}
	if cap(ar.bytes) > arenaKeepBytes {
		ar.bytes = nil
	}
}

// record returns a zero record.
func (ar *arena) record() *kgo.Record {
	if len(ar.recs) == cap(ar.recs) {
		ar.recs = make([]kgo.Record, 0, max(64, 2*cap(ar.recs)))
	}
	ar.recs = ar.recs[:len(ar.recs)+1]
	r := &ar.recs[len(ar.recs)-1]
	*r = kgo.Record{}
	return r
}

// headerSlice returns a slice of n headers.
func (ar *arena) headerSlice(n int) []kgo.RecordHeader {
	if cap(ar.headers)-len(ar.headers) < n {
		ar.headers = make([]kgo.RecordHeader, 0, max(64*n, 2*cap(ar.headers)))
	}
	start := len(ar.headers)
	ar.headers = ar.headers[:start+n]
	return ar.headers[start : start+n : start+n]
}

// buf returns an empty slice with room for n bytes, to append to (an
// append past n reallocates, it never overwrites). More than arenaMaxBuf
// bytes are not taken from the arena.
func (ar *arena) buf(n int) []byte {
	if n > arenaMaxBuf {
		return make([]byte, 0, n)
	}
	if cap(ar.bytes)-len(ar.bytes) < n {
		ar.bytes = make([]byte, 0, max(arenaMaxBuf, 2*cap(ar.bytes)))
	}
	start := len(ar.bytes)
	ar.bytes = ar.bytes[:start+n]
	return ar.bytes[start : start : start+n]
}

// arenas keeps the arenas of finished batches for the next ones. (A
// sync.Pool would not do: every garbage collection empties it, and the
// arenas then grow their chunks again, each one zeroed: 6% of the
// worker's CPU flat out went to that.) It holds no more arenas than the most
// partitions one batch had at once, and at most maxFreeArenas.
type arenas struct {
	mu   sync.Mutex
	free []*arena
}

const maxFreeArenas = 256

// get returns a free arena, or a new one.
func (p *arenas) get() *arena {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.free); n > 0 {
		ar := p.free[n-1]
		p.free = p.free[:n-1]
		return ar
	}
	return new(arena)
}

// put resets ar and keeps it for a later batch.
func (p *arenas) put(ar *arena) {
	ar.reset()
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.free) < maxFreeArenas {
		p.free = append(p.free, ar)
	}
}
