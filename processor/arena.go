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
// An arena is used by one goroutine at a time. Each kind is a list of
// chunks; one that fills up is followed by a chunk kept from an earlier
// batch, or by a new one twice as large. A reset keeps every chunk up to a
// bound, so that an arena that served a large batch serves the next ones
// without allocating: a poll holds the commands of one to a few partitions,
// in shares that vary from batch to batch, and an arena keeping only its
// last chunk grew again, zeroing each new chunk (4% of the worker's CPU
// flat out).
type arena struct {
	recs    chunks[kgo.Record]
	headers chunks[kgo.RecordHeader]
	bytes   chunks[byte]
	outs    []output // the records to produce, in order, once the transaction begins
}

// output is a record decided in a batch, and its promise.
type output struct {
	r       *kgo.Record
	promise func(*kgo.Record, error)
}

// Bounds of what an arena keeps for the next batch of each kind, and of
// one buf.
const (
	arenaKeepBytes = 4 << 20
	arenaMaxBuf    = 64 << 10
)

// chunks is the memory of one kind of an arena.
type chunks[T any] struct {
	cur  []T   // being filled
	used [][]T // filled since the last reset
	free [][]T // kept from earlier batches, to fill before making new ones
}

// take returns n elements after the ones taken since the last reset, in a
// chunk of at least least elements.
func (c *chunks[T]) take(n, least int) []T {
	if cap(c.cur)-len(c.cur) < n {
		if c.cur != nil {
			c.used = append(c.used, c.cur)
		}
		if k := len(c.free); k > 0 && cap(c.free[k-1]) >= n {
			c.cur, c.free = c.free[k-1], c.free[:k-1]
		} else {
			c.cur = make([]T, 0, max(least, n, 2*cap(c.cur)))
		}
	}
	start := len(c.cur)
	c.cur = c.cur[:start+n]
	return c.cur[start : start+n : start+n]
}

// reset makes the chunks reusable, up to keepBytes of them: call it only
// once nothing from them is referenced any more. A chunk that would take
// the kept ones past keepBytes is let go, so that one large batch does not
// stay in memory.
//
// With zero, the elements taken are zeroed, so that kept chunks hold no
// pointers to what the batch referenced: the garbage collector, which
// scans them while they wait for the next batch, finds nothing to mark,
// and what they pointed to is not kept alive. take then hands out zero
// elements.
func (c *chunks[T]) reset(keepBytes int, zero bool) {
	if c.cur != nil {
		c.used = append(c.used, c.cur)
		c.cur = nil
	}
	var elem T
	size, kept := int(unsafe.Sizeof(elem)), 0
	for _, ch := range c.free {
		kept += cap(ch) * size
	}
	for _, ch := range c.used { // smallest first: later chunks double
		if kept+cap(ch)*size <= keepBytes {
			if zero {
				clear(ch)
			}
			c.free = append(c.free, ch[:0])
			kept += cap(ch) * size
		}
	}
	clear(c.used)
	c.used = c.used[:0]
}

// reset makes the arena's chunks reusable: call it only once nothing from
// them is referenced any more.
func (ar *arena) reset() {
	ar.recs.reset(arenaKeepBytes, true)
	ar.headers.reset(arenaKeepBytes, true)
	ar.bytes.reset(arenaKeepBytes, false) // no pointers; buf hands out room to append to
	clear(ar.outs)
	ar.outs = ar.outs[:0]
}

// record returns a zero record.
func (ar *arena) record() *kgo.Record {
	return &ar.recs.take(1, 64)[0]
}

// headerSlice returns a slice of n headers.
func (ar *arena) headerSlice(n int) []kgo.RecordHeader {
	return ar.headers.take(n, 64*n)
}

// buf returns an empty slice with room for n bytes, to append to (an
// append past n reallocates, it never overwrites). More than arenaMaxBuf
// bytes are not taken from the arena.
func (ar *arena) buf(n int) []byte {
	if n > arenaMaxBuf {
		return make([]byte, 0, n)
	}
	return ar.bytes.take(n, arenaMaxBuf)[:0]
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
