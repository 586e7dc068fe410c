package processor

import (
	"encoding/binary"
	"hash/maphash"
	"math"
	"sync"
)

// stateCache holds the snapshots of aggregates as the last committed
// transaction left them, so that the next command on a hot aggregate needs
// no Pebble read (Kafka Streams keeps a record cache in front of its stores
// for the same reason). It is bounded by the bytes it holds
// (Config.StateCacheBytes).
//
// It is a write-back cache: a committed snapshot is put here, dirty, and
// reaches Pebble later, once, whatever number of transactions changed its
// aggregate meanwhile — when its segment of the ring is evicted, or when a
// sweep (see sweep) comes by it. Until then the cache is the only local copy
// of that snapshot (the changelog holds it too), so a dirty entry is never
// dropped without a copy of it going to the pending list: the snapshots the
// worker's next store write must write (drain), in order, with those too
// big for the ring. Until that write is committed (settle), get still
// finds them there: a read meanwhile (read.go) must not find an older
// snapshot in Pebble. How the
// store's checkpoints follow is told in checkpoints.go.
//
// It holds encoded snapshots, not decoded states, in a ring of byte
// segments indexed by a map of integers: nothing in it has a pointer, so
// the garbage collector does not walk it. (Decoded states made the cache
// millions of small objects, and marking them took 120–310 ms at every
// collection: the p99 of a command.) A hit costs a copy and a decode of the
// snapshot, once per aggregate per batch: the decoded state lives in the
// batch's overlay, and the bytes in its arena.
//
// The ring is written in order and a segment's entries are evicted all at
// once when the writing comes round to it again. A committed snapshot that
// fits in its aggregate's entry overwrites it in place; one that does not
// takes a new entry at the head, with half as much more room as it needs,
// so that a growing dedupe window fits again the next several times. (When
// every put took a new entry, the ring was mostly old versions of
// snapshots: in a flat-out run over 100k accounts, ≈ 14,000 lookups of
// aggregates the store held missed the cache and read Pebble; in place,
// ≈ 160. With a quarter more room, the old places of the snapshots that
// outgrew theirs, dead until their segment is evicted, still took so much
// of the ring that by the bench's second latency turn the cache answered
// 91% of the lookups at 10k/s, and 98.5% with half.) Eviction follows the
// first put of an entry, not its latest.
//
// Entries are keyed by assignment: a partition assigned again (and
// restored, which may rewrite its store) starts with no entries, and the old
// assignment's entries are never read again and age out.
type stateCache struct {
	mu    sync.Mutex
	seed  maphash.Seed
	index posIndex // hash of (assignment, id) → position: segment<<32 | offset
	segs  [][]byte // the ring, grown a segment at a time up to nsegs as it is first written
	nsegs int      // of the ring: 0 disables the cache
	cur   int      // the segment being written
	size  int      // of a segment: the largest entry cached
	bytes int64    // of the entries the index points to

	sweepSeg, sweepOff int // where the next sweep goes on: segment and offset

	pending   []byte         // entries to write to the store, in order; their flags say why
	pendingAt map[uint64]int // hash of a key → offset in pending of its latest entry
}

// An entry is a header, the aggregate id and room for the snapshot. The
// header: the key's hash, the assignment, the id's length, the snapshot's
// length, the room's, and flags: in the ring, whether it is dirty and
// whether it is stale; in the pending list, why it is to be written.
const entryHeader = 8 + 8 + 4 + 4 + 4 + 4

// The flags of an entry in the ring.
const (
	entryIsDirty = 1 << iota // not in the store yet
	// The index no longer points to it: its key was put again elsewhere,
	// or another key of the same hash took its place. (Eviction and the
	// sweep pass every entry of the ring; a lookup in the index for each
	// to tell was 2% of the worker's CPU with a million accounts.)
	entryIsStale
)

// Why a pending entry is to be written.
const (
	pendingEvicted  = iota + 1 // dirty, and its segment was evicted (or its place taken)
	pendingSwept               // dirty, and the sweep passed it
	pendingUncached            // too big for the ring, or no ring
)

// maxSegment bounds a segment; a cache is cut into at least 16. A
// snapshot larger than a segment is not cached.
const maxSegment = 4 << 20

func newStateCache(maxBytes int64) *stateCache {
	c := &stateCache{seed: maphash.MakeSeed(), pendingAt: map[uint64]int{}}
	if maxBytes > 0 {
		c.size = int(min(maxSegment, max(maxBytes/16, 1)))
		c.nsegs = int(min(max(maxBytes/int64(c.size), 1), 1<<31)) // a position keeps 32 bits for the segment
		c.segs = make([][]byte, 1)
	}
	return c
}

// hash returns the key's hash, never 0 (see posIndex).
func (c *stateCache) hash(a *assigned, id string) uint64 {
	return max(maphash.String(c.seed, id)^a.gen*0x9e3779b97f4a7c15, 1)
}

// entry is the entry at a position of the index.
func (c *stateCache) entry(pos uint64) []byte { return c.segs[pos>>32][uint32(pos):] }

func entryGen(e []byte) uint64 { return binary.LittleEndian.Uint64(e[8:]) }
func entryID(e []byte) []byte {
	return e[entryHeader : entryHeader+int(binary.LittleEndian.Uint32(e[16:]))]
}
func entryValue(e []byte) []byte {
	return e[entryHeader+int(binary.LittleEndian.Uint32(e[16:])):][:binary.LittleEndian.Uint32(e[20:])]
}
func entryFlags(e []byte) uint32 { return binary.LittleEndian.Uint32(e[28:]) }
func entryDirty(e []byte) bool   { return entryFlags(e)&entryIsDirty != 0 }
func setEntryFlag(e []byte, flag uint32, on bool) {
	f := entryFlags(e) &^ flag
	if on {
		f |= flag
	}
	binary.LittleEndian.PutUint32(e[28:], f)
}

// get returns a copy of the aggregate's cached snapshot, if any, in room
// for n bytes that buf returns.
func (c *stateCache) get(a *assigned, id string, buf func(n int) []byte) ([]byte, bool) {
	h := c.hash(a, id)
	c.mu.Lock()
	defer c.mu.Unlock()
	found := func(e []byte) bool { return entryGen(e) == a.gen && string(entryID(e)) == id } // not another key of the same hash
	var e []byte
	if pos, ok := c.index.get(h); ok && found(c.entry(pos)) {
		e = c.entry(pos)
	} else if off, ok := c.pendingAt[h]; ok && found(c.pending[off:]) {
		e = c.pending[off:] // let go of, not written yet
	} else {
		return nil, false
	}
	v := entryValue(e)
	return append(buf(len(v)), v...), true
}

// put caches a committed aggregate's snapshot v (copied), dirty; one too
// big for the ring (or with no ring) goes to the pending list instead. The
// dirty entries put drops (those of an evicted segment, or one of the same
// hash) go to the pending list too.
func (c *stateCache) put(a *assigned, id string, v []byte) {
	h := c.hash(a, id)
	room := len(v)
	c.mu.Lock()
	defer c.mu.Unlock()
	if pos, ok := c.index.get(h); ok {
		e := c.entry(pos)
		same := entryGen(e) == a.gen && string(entryID(e)) == id
		if same && int(binary.LittleEndian.Uint32(e[24:])) >= len(v) {
			binary.LittleEndian.PutUint32(e[20:], uint32(len(v)))
			copy(e[entryHeader+len(id):], v)
			setEntryFlag(e, entryIsDirty, true)
			return
		}
		if !same { // another key of the same hash: it must reach the store
			c.spill(e, pendingEvicted)
		}
		c.drop(h, e)
		room += len(v) / 2 // it grew: room for it to grow again
	}
	n := min(entryHeader+len(id)+room, c.size)
	if room = n - entryHeader - len(id); room < len(v) {
		c.pendingAt[h] = len(c.pending)
		c.pending = appendEntry(c.pending, h, a.gen, id, v, len(v), pendingUncached)
		return
	}
	if len(c.segs[c.cur])+n > c.size {
		c.cur = (c.cur + 1) % c.nsegs
		if c.cur == len(c.segs) {
			c.segs = append(c.segs, nil)
		} else {
			c.evict(c.cur)
		}
	}
	seg := c.segs[c.cur]
	if seg == nil {
		seg = make([]byte, 0, c.size)
	}
	c.index.set(h, uint64(c.cur)<<32|uint64(len(seg)))
	c.segs[c.cur] = appendEntry(seg, h, a.gen, id, v, room, entryIsDirty)
	c.bytes += int64(n)
}

// appendEntry appends an entry of key hash h to b, with room for the
// snapshot (at least len(v)) and flags.
func appendEntry(b []byte, h, gen uint64, id string, v []byte, room int, flags uint32) []byte {
	b = binary.LittleEndian.AppendUint64(b, h)
	b = binary.LittleEndian.AppendUint64(b, gen)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(id)))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(v)))
	b = binary.LittleEndian.AppendUint32(b, uint32(room))
	b = binary.LittleEndian.AppendUint32(b, flags)
	b = append(append(b, id...), v...)
	return append(b, make([]byte, room-len(v))...)
}

// spill copies a dirty entry of the ring to the pending list, for why,
// and marks it clean.
func (c *stateCache) spill(e []byte, why uint32) {
	if entryDirty(e) {
		h, v := binary.LittleEndian.Uint64(e), entryValue(e)
		c.pendingAt[h] = len(c.pending)
		c.pending = appendEntry(c.pending, h, entryGen(e), string(entryID(e)), v, len(v), why)
		setEntryFlag(e, entryIsDirty, false)
	}
}

// drain calls write with every entry of the pending list, in the order
// they came (a key's later entry after its earlier one). The entries stay
// readable until settle. Only the goroutine that puts and sweeps calls it,
// without holding anything get needs: write may block.
func (c *stateCache) drain(write func(gen uint64, id string, v []byte, why uint32)) {
	c.mu.Lock()
	pending := c.pending
	c.mu.Unlock()
	for off := 0; off < len(pending); off += entrySize(pending[off:]) {
		e := pending[off:]
		write(entryGen(e), string(entryID(e)), entryValue(e), entryFlags(e))
	}
}

// settle empties the pending list once its entries are in the store.
func (c *stateCache) settle() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cap(c.pending) > max(2*c.size, 1<<20) { // one large write-back: not kept
		c.pending = nil
	}
	c.pending = c.pending[:0]
	clear(c.pendingAt)
}

// drop takes entry e, of hash h, out of the index.
func (c *stateCache) drop(h uint64, e []byte) {
	c.index.delete(h)
	setEntryFlag(e, entryIsStale, true)
	c.bytes -= int64(entrySize(e))
}

// current reports whether entry e of the ring is the one the index points
// to for its hash (not an older place of its key).
func current(e []byte) bool { return entryFlags(e)&entryIsStale == 0 }

// evict drops every entry of segment s from the index, the dirty ones
// to the pending list, and empties it.
func (c *stateCache) evict(s int) {
	seg := c.segs[s]
	for off := 0; off < len(seg); off += entrySize(seg[off:]) {
		if current(seg[off:]) {
			c.spill(seg[off:], pendingEvicted)
			c.drop(binary.LittleEndian.Uint64(seg[off:]), seg[off:])
		}
	}
	c.segs[s] = seg[:0]
	if c.sweepSeg == s {
		// What is put here from now on came after the sweep's round
		// began: the round has nothing to do here any more.
		c.sweepOff = math.MaxInt
	}
}

// sweep goes on through the ring from where the last sweep stopped, over
// entries of at least n bytes, and copies every dirty entry it passes to
// the pending list (which makes it clean). It reports whether it came round to the
// start of the ring: every entry that was in the ring when that round
// began (beginRound, or the end of the round before), and was not put
// again since, has then gone to the pending list since it was last put. n <= 0
// sweeps the whole ring from where it is.
func (c *stateCache) sweep(n int) (round bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n <= 0 {
		n = math.MaxInt
	}
	for n > 0 && c.nsegs > 0 {
		seg := c.segs[c.sweepSeg]
		if c.sweepOff >= len(seg) { // this segment is done (or was evicted and refilled below here)
			c.sweepSeg, c.sweepOff = (c.sweepSeg+1)%len(c.segs), 0
			if c.sweepSeg == 0 {
				return true
			}
			continue
		}
		if current(seg[c.sweepOff:]) {
			c.spill(seg[c.sweepOff:], pendingSwept)
		}
		size := entrySize(seg[c.sweepOff:])
		c.sweepOff += size
		n -= size
	}
	return c.nsegs == 0
}

// beginRound puts the sweep at the start of the ring: the round it begins
// passes every entry the ring holds now.
func (c *stateCache) beginRound() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sweepSeg, c.sweepOff = 0, 0
}

// used returns the bytes the ring's segments hold, entries old and current.
func (c *stateCache) used() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, s := range c.segs {
		n += len(s)
	}
	return n
}

// entrySize returns the length of the entry e begins with.
func entrySize(e []byte) int {
	return entryHeader + int(binary.LittleEndian.Uint32(e[16:])) + int(binary.LittleEndian.Uint32(e[24:]))
}

// len returns the bytes of the entries held.
func (c *stateCache) len() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
}
