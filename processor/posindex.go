package processor

// posIndex is the state cache's index: a key's hash → the position of its
// entry in the ring. It is a table of open addressing with linear probing
// over slots of two integers, at most half full: a lookup reads one or two
// adjacent slots, where Go's map read a control word and then a slot
// elsewhere, two cache misses in a large table (with a million accounts
// the index's lookups, almost all misses of the CPU's caches, were 7% of
// the worker's CPU; a lookup, a delete and an insert among 300k hashes:
// 210–260 → 120 ns, BenchmarkPosIndex). It takes 32 to 64 bytes an entry
// (a Go map took about 20), and an entry of the ring at least 32 more. A
// hash is its own slot's number (its low bits): the keys are hashes
// already. Hash 0 marks an empty slot, so stateCache.hash never returns it.
type posIndex struct {
	slots []posSlot // a power of two of them, or none
	n     int       // slots in use
}

type posSlot struct{ h, pos uint64 }

// minIndexSlots is the table's size when first written.
const minIndexSlots = 1 << 10

func (x *posIndex) get(h uint64) (uint64, bool) {
	if len(x.slots) == 0 {
		return 0, false
	}
	mask := uint64(len(x.slots) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		switch s := &x.slots[i]; s.h {
		case h:
			return s.pos, true
		case 0:
			return 0, false
		}
	}
}

func (x *posIndex) set(h, pos uint64) {
	if 2*(x.n+1) > len(x.slots) {
		x.grow()
	}
	mask := uint64(len(x.slots) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		switch s := &x.slots[i]; s.h {
		case h:
			s.pos = pos
			return
		case 0:
			*s = posSlot{h, pos}
			x.n++
			return
		}
	}
}

// delete removes h, if there, and moves back the slots after it that
// probed past it, so that no lookup stops short (no tombstones).
func (x *posIndex) delete(h uint64) {
	if len(x.slots) == 0 {
		return
	}
	mask := uint64(len(x.slots) - 1)
	i := h & mask
	for ; x.slots[i].h != h; i = (i + 1) & mask {
		if x.slots[i].h == 0 {
			return
		}
	}
	for j := (i + 1) & mask; x.slots[j].h != 0; j = (j + 1) & mask {
		// The slot at j stays unless its home slot k lies cyclically
		// outside (i, j]: then a lookup from k passes i, and it moves there.
		if k := x.slots[j].h & mask; (j-k)&mask >= (j-i)&mask {
			x.slots[i] = x.slots[j]
			i = j
		}
	}
	x.slots[i] = posSlot{}
	x.n--
}

func (x *posIndex) grow() {
	old := x.slots
	x.slots, x.n = make([]posSlot, max(2*len(old), minIndexSlots)), 0
	for _, s := range old {
		if s.h != 0 {
			x.set(s.h, s.pos)
		}
	}
}
