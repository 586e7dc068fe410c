package processor

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// The cache never answers with a snapshot other than the last one put for
// its key: a snapshot too big to cache drops the entry it replaces, an
// entry of another assignment or of a colliding hash is not served, and
// eviction keeps the bound.
func TestStateCache(t *testing.T) {
	a := &assigned{gen: assignments.Add(1)}
	c := newStateCache(4096) // 16 segments of 256 bytes
	c.put(a, "x", []byte("one"))
	got, ok := c.get(a, "x", heapBuf)
	if !ok || string(got) != "one" {
		t.Fatalf("get after put = %q, %v", got, ok)
	}
	got[0] = 'X'
	if again, _ := c.get(a, "x", heapBuf); string(again) != "one" {
		t.Fatalf("changing what get returned changed the cache: %q", again)
	}
	c.put(a, "x", make([]byte, 300))
	if got, ok := c.get(a, "x", heapBuf); !ok || len(got) != 300 {
		t.Fatalf("an uncacheable newer snapshot, not written yet: get = %q, %v", got, ok)
	}
	c.settle() // written
	if got, ok := c.get(a, "x", heapBuf); ok {
		t.Fatalf("an uncacheable newer snapshot left %q cached", got)
	}
	if _, ok := c.get(&assigned{gen: assignments.Add(1)}, "y", heapBuf); ok {
		t.Error("an entry of another assignment was served")
	}
	// A hash that points at another key's entry is a miss.
	c.put(a, "y", []byte("why"))
	pos, _ := c.index.get(c.hash(a, "y"))
	c.index.set(c.hash(a, "z"), pos)
	if got, ok := c.get(a, "z", heapBuf); ok {
		t.Errorf("get(z) served y's entry %q", got)
	}
	for i := range 100 {
		c.put(a, fmt.Sprint(i), make([]byte, 100))
	}
	if c.len() > 4096 {
		t.Errorf("cache holds %d bytes, bound 4096", c.len())
	}
	var held int
	for _, s := range c.segs {
		held += cap(s)
	}
	if held > 4096 {
		t.Errorf("cache segments hold %d bytes, bound 4096", held)
	}
	c.settle()
	if _, ok := c.get(a, "0", heapBuf); ok {
		t.Error("the oldest entry was not evicted")
	}
	if _, ok := c.get(a, "99", heapBuf); !ok {
		t.Error("the newest entry was evicted")
	}
	// A bound meaning "no bound" allocates as it is used, not up front.
	huge := newStateCache(math.MaxInt64)
	huge.put(a, "x", []byte("one"))
	if got, ok := huge.get(a, "x", heapBuf); !ok || string(got) != "one" || len(huge.segs) != 1 {
		t.Errorf("a cache of MaxInt64 bytes: get = %q, %v; %d segments", got, ok, len(huge.segs))
	}
}

// Whatever the order and sizes of puts, the ring wrapping round many times,
// a hit is always the last value put for its key, and the bytes counted are
// those of the entries held.
func TestStateCacheRing(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	as := []*assigned{{gen: assignments.Add(1)}, {gen: assignments.Add(1)}}
	c := newStateCache(64 << 10)
	type key struct {
		a  *assigned
		id string
	}
	last := map[key][]byte{}
	for i := range 20000 {
		a, id := as[rng.IntN(2)], fmt.Sprint(rng.IntN(500))
		v := bytes.Repeat([]byte{byte(i)}, rng.IntN(c.size))
		c.put(a, id, v)
		c.settle() // as if written: this test follows the ring alone
		last[key{a, id}] = v
		if i%100 != 0 {
			continue
		}
		var held int64
		for k, want := range last {
			if got, ok := c.get(k.a, k.id, heapBuf); ok {
				if !bytes.Equal(got, want) {
					t.Fatalf("after %d puts get(%d/%s) = %d bytes, want %d", i+1, k.a.gen, k.id, len(got), len(want))
				}
				pos, _ := c.index.get(c.hash(k.a, k.id))
				held += int64(entrySize(c.segs[pos>>32][uint32(pos):]))
			}
		}
		if held != c.len() {
			t.Fatalf("after %d puts the cache counts %d bytes, its hits hold %d", i+1, c.len(), held)
		}
	}
}

func heapBuf(n int) []byte { return make([]byte, 0, n) }

// The cache writes back: whatever the order and sizes of puts and sweeps,
// the last value put for a key is in the cache (or in its pending list,
// until the write is settled) or in the store (never lost, and never read
// older while the write is under way), a clean entry is what the store
// has, and when a sweep's round ends, every key last put before that round
// began is in the store with its last value. Those are what the store's
// checkpoints rely on (checkpoints.go).
func TestStateCacheWriteBack(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	as := map[uint64]*assigned{}
	var gens []uint64
	for range 2 {
		a := &assigned{gen: assignments.Add(1)}
		as[a.gen], gens = a, append(gens, a.gen)
	}
	c := newStateCache(64 << 10)
	last := map[cacheKey][]byte{}  // the last value put
	putAt := map[cacheKey]int{}    // when
	store := map[cacheKey][]byte{} // what was written last
	write := func() {              // as the worker's store write does
		c.drain(func(gen uint64, id string, v []byte, _ uint32) { store[cacheKey{gen, id}] = bytes.Clone(v) })
		c.settle()
	}
	roundBegan, rounds := 0, 0
	for i := range 30000 {
		k := cacheKey{gens[rng.IntN(2)], fmt.Sprint(rng.IntN(500))}
		v := bytes.Repeat([]byte{byte(i)}, rng.IntN(200))
		if rng.IntN(100) == 0 {
			v = make([]byte, c.size) // too big for the ring
		}
		c.put(as[k.gen], k.id, v)
		last[k], putAt[k] = v, i
		if i%100 == 0 { // while the write is under way too
			checkWriteBack(t, c, as, last, store)
		}
		if rng.IntN(4) != 0 {
			continue // more puts before the write
		}
		round := rng.IntN(10) == 0 && c.sweep(rng.IntN(4000))
		write()
		if round {
			for k, at := range putAt {
				if at < roundBegan && !bytes.Equal(store[k], last[k]) {
					t.Fatalf("round ending at put %d: key %v, last put at %d before the round began at %d, is not in the store", i, k, at, roundBegan)
				}
			}
			roundBegan = i + 1
			rounds++
		}
		checkWriteBack(t, c, as, last, store)
	}
	if rounds < 3 {
		t.Fatalf("only %d rounds of the sweep", rounds)
	}
	for !c.sweep(0) {
	}
	c.sweep(0)
	write()
	for k, want := range last {
		if !bytes.Equal(store[k], want) {
			t.Fatalf("after a whole round %v is not in the store", k)
		}
	}
}

// cacheKey is an aggregate of an assignment.
type cacheKey struct {
	gen uint64
	id  string
}

// checkWriteBack checks that every key's last value is what the cache
// serves, or what the store has when the cache serves nothing, and that a
// clean entry is what the store has.
func checkWriteBack(t *testing.T, c *stateCache, as map[uint64]*assigned, last, store map[cacheKey][]byte) {
	t.Helper()
	for k, want := range last {
		got, hit := c.get(as[k.gen], k.id, heapBuf)
		pos, indexed := c.index.get(c.hash(as[k.gen], k.id))
		switch {
		case hit && !bytes.Equal(got, want):
			t.Fatalf("get(%v) = %d bytes, want %d", k, len(got), len(want))
		case !hit && !bytes.Equal(store[k], want):
			t.Fatalf("%v is neither cached nor stored", k)
		case hit && indexed && !entryDirty(c.entry(pos)) && !bytes.Equal(store[k], want):
			t.Fatalf("%v is clean in the cache but not what the store has", k)
		}
	}
}

// A snapshot that fits in its aggregate's entry overwrites it in place, so
// that putting one aggregate again and again evicts nobody; one that grew
// takes a new entry with room to grow again.
func TestStateCacheInPlace(t *testing.T) {
	a := &assigned{gen: assignments.Add(1)}
	c := newStateCache(16 << 10) // 16 segments of 1 KiB
	for i := range 100 {
		c.put(a, fmt.Sprint(i), bytes.Repeat([]byte{byte(i)}, 100))
	}
	for i := range 1000 { // as many bytes put as the cache holds, ten times over
		c.put(a, "7", bytes.Repeat([]byte{byte(i)}, 90+i%11))
	}
	for i := range 100 {
		want := bytes.Repeat([]byte{byte(i)}, 100)
		if i == 7 {
			want = bytes.Repeat([]byte{byte(999 % 256)}, 90+999%11)
		}
		if got, ok := c.get(a, fmt.Sprint(i), heapBuf); !ok || !bytes.Equal(got, want) {
			t.Fatalf("entry %d: get = %d bytes, %v; want %d bytes", i, len(got), ok, len(want))
		}
	}
	before := c.len()
	c.put(a, "7", make([]byte, 120)) // grew past its room
	pos, _ := c.index.get(c.hash(a, "7"))
	if room := binary.LittleEndian.Uint32(c.segs[pos>>32][uint32(pos)+24:]); room < 120+120/2 {
		t.Errorf("a grown entry has room for %d bytes, want at least %d", room, 120+120/2)
	}
	if c.len() <= before {
		t.Errorf("the cache counts %d bytes after an entry grew, %d before", c.len(), before)
	}
	if got, ok := c.get(a, "7", heapBuf); !ok || len(got) != 120 {
		t.Errorf("the grown entry reads %d bytes, %v", len(got), ok)
	}
}

// BenchmarkStateCache is the state cache in 64 MiB (half the default)
// with snapshots of the bench's size (≈ 300 bytes): a hit and a put among 100k
// aggregates; and a lookup and a put of a million aggregates in random
// order, a fifth of which the cache holds: mostly misses, and puts that
// evict (written back every thousand puts, as the worker does after each
// batch).
func BenchmarkStateCache(b *testing.B) {
	v := bytes.Repeat([]byte{1}, 300)
	accountIDs := func(n int) []string {
		ids := make([]string, n)
		for i := range ids {
			ids[i] = fmt.Sprint("acc-", i)
		}
		return ids
	}
	buf := make([]byte, 0, 512)
	b.Run("100k-hits", func(b *testing.B) {
		a, c, ids := &assigned{gen: assignments.Add(1)}, newStateCache(64<<20), accountIDs(100000)
		for _, id := range ids {
			c.put(a, id, v)
		}
		i := 0
		for b.Loop() {
			id := ids[i%len(ids)]
			if _, ok := c.get(a, id, func(int) []byte { return buf[:0] }); !ok {
				b.Fatalf("miss of %s", id)
			}
			c.put(a, id, v)
			i++
		}
	})
	b.Run("1M-random", func(b *testing.B) {
		a, c, ids := &assigned{gen: assignments.Add(1)}, newStateCache(64<<20), accountIDs(1000000)
		rng := rand.New(rand.NewPCG(1, 2))
		i := 0
		for b.Loop() {
			id := ids[rng.IntN(len(ids))]
			c.get(a, id, func(int) []byte { return buf[:0] })
			c.put(a, id, v)
			if i++; i%1000 == 0 {
				c.drain(func(uint64, string, []byte, uint32) {})
				c.settle()
			}
		}
	})
}

// The id filter never says absent of an id added to it, says nothing until
// complete, and then says absent of most ids never added.
func TestIDFilter(t *testing.T) {
	f := newIDFilter(8 << 10)
	for i := range 8000 {
		if i%2 == 0 {
			f.add(fmt.Sprint("acc-", i))
		} else {
			f.addBytes(fmt.Append(nil, "acc-", i))
		}
	}
	if f.absent("acc-1") || f.absent("never") {
		t.Fatal("an incomplete filter answered")
	}
	f.complete.Store(true)
	for i := range 8000 {
		if f.absent(fmt.Sprint("acc-", i)) {
			t.Fatalf("acc-%d, added, is absent", i)
		}
	}
	absent := 0
	for i := range 10000 {
		if f.absent(fmt.Sprint("new-", i)) {
			absent++
		}
	}
	if absent < 9000 { // 8 bits an id, 4 probes: 2.4% answer maybe
		t.Errorf("%d of 10000 ids never added are absent, want most", absent)
	}
	var none *idFilter
	none.add("acc-1")
	if none.absent("acc-1") || newIDFilter(-1) != nil {
		t.Error("no filter answered")
	}
}
