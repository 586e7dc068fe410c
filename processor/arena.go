package processor

import (
	"slices"
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
// batch, or by a new one twice as large. A reset keeps chunks for as much
// as the recent batches took (see peak), so that an arena that served a
// large batch serves the next ones without allocating: a poll holds the
// commands of one to a few partitions, in shares that vary from batch to
// batch, and an arena keeping only its last chunk grew again, zeroing each
// new chunk (4% of the worker's CPU flat out). An arena that kept every
// chunk up to its bound instead kept, after a worker caught up flat out,
// ≈ 40 MiB of records and headers that every garbage collection scanned at
// light load: in the bench at 10k commands/s, 12–15 ms of marking at each
// collection, against 4 ms with them let go (cmd/decider/PERFORMANCE.md,
// the seventeenth round); a mark phase slows the commands decided meanwhile.
type arena struct {
	recs     chunks[kgo.Record]
	headers  chunks[kgo.RecordHeader]
	bytes    chunks[byte]
	outs     []output // the records to produce, in order, once the transaction begins
	outsPeak peak     // of len(outs)
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

// peak is the most a recent batch took of something: a batch that takes
// less lowers it by a peakDecay-th, at least one (at 10k commands/s an
// arena serves hundreds of batches a second, so a burst's peak is gone
// within a second or two).
type peak int

const peakDecay = 32

// update counts a batch that took n, and returns the peak.
func (p *peak) update(n int) int {
	*p = max(peak(n), *p-(*p+peakDecay-1)/peakDecay)
	return int(*p)
}

// chunks is the memory of one kind of an arena.
type chunks[T any] struct {
	cur  []T   // being filled
	used [][]T // filled since the last reset
	free [][]T // kept from earlier batches, to fill before making new ones
	peak peak  // of the elements taken
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

// reset makes the chunks reusable: call it only once nothing from them is
// referenced any more. It keeps the smallest chunks that hold the peak of
// elements taken, up to keepBytes, and lets the others go.
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
	took := 0
	for _, ch := range c.used {
		took += len(ch)
	}
	var elem T
	size := int(unsafe.Sizeof(elem))
	want := c.peak.update(took)
	all := append(c.free, c.used...)
	slices.SortFunc(all, func(a, b []T) int { return cap(a) - cap(b) })
	c.free = all[:0]
	kept := 0
	for _, ch := range all {
		if kept >= want || (kept+cap(ch))*size > keepBytes {
			break
		}
		if zero {
			clear(ch)
		}
		c.free = append(c.free, ch[:0])
		kept += cap(ch)
	}
	clear(all[len(c.free):]) // the chunks let go
	clear(c.used)
	c.used = c.used[:0]
}

// reset makes the arena's chunks reusable: call it only once nothing from
// them is referenced any more.
func (ar *arena) reset() {
	ar.recs.reset(arenaKeepBytes, true)
	ar.headers.reset(arenaKeepBytes, true)
	ar.bytes.reset(arenaKeepBytes, false) // no pointers; buf hands out room to append to
	if cap(ar.outs) > 2*ar.outsPeak.update(len(ar.outs)) {
		ar.outs = nil
		return
	}
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
// partitions one batch had at once, and at most maxFreeArenas. It hands out
// the arena given back first, so that every arena it keeps serves batches
// in turn and lets go of what they no longer take (a last-in first-out list
// left the arenas of a burst's larger batches at its bottom, their chunks
// kept).
type arenas struct {
	mu   sync.Mutex
	free []*arena
}

const maxFreeArenas = 256

// get returns a free arena, or a new one.
func (p *arenas) get() *arena {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.free) > 0 {
		ar := p.free[0]
		p.free = slices.Delete(p.free, 0, 1)
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
