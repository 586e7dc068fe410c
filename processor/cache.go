package processor

import (
	"encoding/binary"
	"hash/maphash"
	"sync"
)

// stateCache holds the snapshots of aggregates as the last committed
// transaction left them, so that the next command on a hot aggregate needs
// no Pebble read (Kafka Streams keeps a record cache in front of its stores
// for the same reason). It is bounded by the bytes it holds
// (Config.StateCacheBytes).
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
// takes a new entry at the head, with a quarter more room than it needs, so
// that a growing dedupe window fits again the next few times. (When every
// put took a new entry, the ring was mostly old versions of snapshots: in a
// flat-out run over 100k accounts, ≈ 14,000 lookups of aggregates the store
// held missed the cache and read Pebble; in place, ≈ 160.) Eviction follows
// the first put of an entry, not its latest.
//
// Entries are keyed by assignment: a partition assigned again (and
// restored, which may rewrite its store) starts with no entries, and the old
// assignment's entries are never read again and age out.
type stateCache struct {
	mu    sync.Mutex
	seed  maphash.Seed
	index map[uint64]uint64 // hash of (assignment, id) → position: segment<<32 | offset
	segs  [][]byte          // the ring, grown a segment at a time up to nsegs as it is first written
	nsegs int               // of the ring: 0 disables the cache
	cur   int               // the segment being written
	size  int               // of a segment: the largest entry cached
	bytes int64             // of the entries the index points to
}

// An entry is a header, the aggregate id and room for the snapshot. The
// header: the key's hash, the assignment, the id's length, the snapshot's
// length, the room's.
const entryHeader = 8 + 8 + 4 + 4 + 4

// maxSegment bounds a segment; a cache is cut into at least 16. A
// snapshot larger than a segment is not cached.
const maxSegment = 4 << 20

func newStateCache(maxBytes int64) *stateCache {
	c := &stateCache{seed: maphash.MakeSeed(), index: map[uint64]uint64{}}
	if maxBytes > 0 {
		c.size = int(min(maxSegment, max(maxBytes/16, 1)))
		c.nsegs = int(min(max(maxBytes/int64(c.size), 1), 1<<31)) // a position keeps 32 bits for the segment
		c.segs = make([][]byte, 1)
	}
	return c
}

func (c *stateCache) hash(a *assigned, id string) uint64 {
	return maphash.String(c.seed, id) ^ a.gen*0x9e3779b97f4a7c15
}

// get returns a copy of the aggregate's cached snapshot, if any, in room
// for n bytes that buf returns.
func (c *stateCache) get(a *assigned, id string, buf func(n int) []byte) ([]byte, bool) {
	if c.nsegs == 0 {
		return nil, false
	}
	h := c.hash(a, id)
	c.mu.Lock()
	defer c.mu.Unlock()
	pos, ok := c.index[h]
	if !ok {
		return nil, false
	}
	e := c.segs[pos>>32][uint32(pos):]
	gen, idLen, n := binary.LittleEndian.Uint64(e[8:]), int(binary.LittleEndian.Uint32(e[16:])), int(binary.LittleEndian.Uint32(e[20:]))
	if gen != a.gen || string(e[entryHeader:entryHeader+idLen]) != id {
		return nil, false // another key of the same hash
	}
	v := e[entryHeader+idLen:][:n]
	return append(buf(n), v...), true
}

// put caches a committed aggregate's snapshot v (copied). One too big to
// cache replaces nothing: its older entry is dropped.
func (c *stateCache) put(a *assigned, id string, v []byte) {
	if c.nsegs == 0 {
		return
	}
	h := c.hash(a, id)
	room := len(v)
	c.mu.Lock()
	defer c.mu.Unlock()
	if pos, ok := c.index[h]; ok {
		e := c.segs[pos>>32][uint32(pos):]
		idLen := int(binary.LittleEndian.Uint32(e[16:]))
		if binary.LittleEndian.Uint64(e[8:]) == a.gen && string(e[entryHeader:entryHeader+idLen]) == id &&
			int(binary.LittleEndian.Uint32(e[24:])) >= len(v) {
			binary.LittleEndian.PutUint32(e[20:], uint32(len(v)))
			copy(e[entryHeader+idLen:], v)
			return
		}
		delete(c.index, h)
		c.bytes -= int64(entrySize(e))
		room += len(v) / 4 // it grew: room for it to grow again
	}
	n := min(entryHeader+len(id)+room, c.size)
	if room = n - entryHeader - len(id); room < len(v) {
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
	c.index[h] = uint64(c.cur)<<32 | uint64(len(seg))
	seg = binary.LittleEndian.AppendUint64(seg, h)
	seg = binary.LittleEndian.AppendUint64(seg, a.gen)
	seg = binary.LittleEndian.AppendUint32(seg, uint32(len(id)))
	seg = binary.LittleEndian.AppendUint32(seg, uint32(len(v)))
	seg = binary.LittleEndian.AppendUint32(seg, uint32(room))
	seg = append(append(seg, id...), v...)
	c.segs[c.cur] = append(seg, make([]byte, room-len(v))...)
	c.bytes += int64(n)
}

// evict drops every entry of segment s from the index and empties it.
func (c *stateCache) evict(s int) {
	seg := c.segs[s]
	for off := 0; off < len(seg); {
		n := entrySize(seg[off:])
		h := binary.LittleEndian.Uint64(seg[off:])
		if pos, ok := c.index[h]; ok && pos == uint64(s)<<32|uint64(off) {
			delete(c.index, h)
			c.bytes -= int64(n)
		}
		off += n
	}
	c.segs[s] = seg[:0]
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
