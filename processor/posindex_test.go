package processor

import (
	"math/rand/v2"
	"testing"
)

// TestPosIndex runs random sets, lookups and deletes against a map. The
// hashes are drawn from few values whose low bits collide, so that probe
// runs are long, wrap around the end of the table and are cut by deletes.
func TestPosIndex(t *testing.T) {
	for seed := range uint64(8) {
		rng := rand.New(rand.NewPCG(seed, 1))
		var x posIndex
		model := map[uint64]uint64{}
		hash := func() uint64 {
			h := rng.Uint64N(16)<<32 | rng.Uint64N(24) // low bits: 24 home slots
			if rng.IntN(4) == 0 {
				h |= minIndexSlots - 1 - rng.Uint64N(4) // homes at the table's end
			}
			return h + 1
		}
		for step := range 20000 {
			h := hash()
			switch op := rng.IntN(10); {
			case op < 4:
				pos := rng.Uint64()
				x.set(h, pos)
				model[h] = pos
			case op < 7:
				x.delete(h)
				delete(model, h)
			default:
				got, ok := x.get(h)
				want, wok := model[h]
				if ok != wok || got != want {
					t.Fatalf("seed %d step %d: get(%#x) = %d, %v; want %d, %v", seed, step, h, got, ok, want, wok)
				}
			}
			if x.n != len(model) {
				t.Fatalf("seed %d step %d: %d slots in use, want %d", seed, step, x.n, len(model))
			}
		}
		for h, want := range model {
			if got, ok := x.get(h); !ok || got != want {
				t.Fatalf("seed %d: at the end get(%#x) = %d, %v; want %d", seed, h, got, ok, want)
			}
		}
	}
}

// BenchmarkPosIndex is a lookup (half of them misses), a delete and an
// insert among 300k random hashes, as the state cache does with a million
// accounts, in posIndex and in the Go map it replaced.
func BenchmarkPosIndex(b *testing.B) {
	const n = 300000
	rng := rand.New(rand.NewPCG(1, 2))
	keys := make([]uint64, 4*n)
	for i := range keys {
		keys[i] = rng.Uint64() | 1
	}
	type index interface {
		get(h uint64) (uint64, bool)
		set(h, pos uint64)
		delete(h uint64)
	}
	run := func(b *testing.B, fresh func() index) {
		var x index
		i := len(keys)
		for b.Loop() {
			if i == len(keys) { // start again from n keys
				b.StopTimer()
				x, i = fresh(), n
				for j, h := range keys[:n] {
					x.set(h, uint64(j))
				}
				b.StartTimer()
			}
			x.get(keys[(i*7919)%(2*n)])
			x.delete(keys[i-n])
			x.set(keys[i], uint64(i))
			i++
		}
	}
	b.Run("posIndex", func(b *testing.B) { run(b, func() index { return &posIndex{} }) })
	b.Run("map", func(b *testing.B) { run(b, func() index { return goMap{} }) })
}

type goMap map[uint64]uint64

func (m goMap) get(h uint64) (uint64, bool) { pos, ok := m[h]; return pos, ok }
func (m goMap) set(h, pos uint64)           { m[h] = pos }
func (m goMap) delete(h uint64)             { delete(m, h) }
