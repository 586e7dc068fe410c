package processor

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"

	"github.com/deciderhq/decider/statestore"
	dto "github.com/prometheus/client_model/go"
)

// The store stays a prefix of the changelog while the cache writes back
// (checkpoints.go): at any moment, a restore of each partition from its
// checkpoint in the store — what the store holds, then the changelog from
// the checkpoint on — gives every aggregate its latest committed snapshot.
// Batches of random aggregates of two partitions are applied as the worker
// applies them, through a small cache with short rounds, and the store is
// checked against a model changelog after every batch, as a crash would
// find it. Now and then a partition is assigned again and restored (its
// dirty snapshots of the old assignment must not be written after that), and
// now and then the worker stops, writing everything back.
func TestCheckpointsKeepThePrefix(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprint("seed-", seed), func(t *testing.T) { checkpointsKeepThePrefix(t, seed) })
	}
}

func checkpointsKeepThePrefix(t *testing.T, seed uint64) {
	w, agg := offlineWorker(t, func(c *Config) { c.StateCacheBytes, c.CheckpointBytes = 8<<10, 4<<10 })
	store := w.cfg.Store
	type record struct {
		id    string
		value []byte
	}
	changelog := map[int32][]record{} // by partition, offset = index
	assign := func(p int32) *assigned {
		key := partitionKey{"commands", p}
		a := &assigned{agg: agg, key: key, gen: assignments.Add(1), ids: newIDFilter(0), lock: w.lock(key)}
		w.mu.Lock()
		w.parts[a.key] = a
		w.mu.Unlock()
		return a
	}
	// restore catches the store up with partition p's changelog, as
	// statestore.Store.Restore does.
	restore := func(p int32) {
		next, err := store.Checkpoint(agg.Name(), p)
		if err != nil {
			t.Fatal(err)
		}
		wr := store.NewWrites(0)
		for _, r := range changelog[p][next:] {
			if err := wr.Snapshot(agg.Name(), p, r.id, r.value); err != nil {
				t.Fatal(err)
			}
		}
		if err := errors.Join(wr.Checkpoint(agg.Name(), p, int64(len(changelog[p]))), wr.Commit()); err != nil {
			t.Fatal(err)
		}
	}
	// check restores every partition from the store in the model and
	// compares each aggregate with its latest snapshot.
	check := func(step int) {
		t.Helper()
		for p, log := range changelog {
			next, err := store.Checkpoint(agg.Name(), p)
			if err != nil {
				t.Fatal(err)
			}
			latest, restored := map[string]string{}, map[string]string{}
			for i, r := range log {
				latest[r.id] = string(r.value)
				if int64(i) >= next {
					restored[r.id] = string(r.value)
				}
			}
			for id, want := range latest {
				got, ok := restored[id]
				if !ok {
					v, err := store.Get(agg.Name(), p, id)
					if err != nil {
						t.Fatalf("step %d: partition %d, checkpoint %d of %d: %s: %v (want %s)", step, p, next, len(log), id, err, want)
					}
					got = string(v)
				}
				if got != want {
					t.Fatalf("step %d: partition %d, checkpoint %d of %d: %s restores as %.20s, want %.20s", step, p, next, len(log), id, got, want)
				}
			}
		}
	}
	rng := rand.New(rand.NewPCG(seed, 6))
	as := []*assigned{assign(0), assign(1)}
	for step := range 800 {
		// A batch: a few aggregates of each partition, some of them
		// written more than once, some too big for the cache.
		b := &batch{w: w}
		for _, a := range as {
			pb := &partBatch{b: b, a: a, overlay: statestore.NewOverlay(agg.Name(), a.key.partition, 0), next: new(atomic.Int64)}
			p := a.key.partition
			for range rng.IntN(6) {
				id := fmt.Sprint("acc-", rng.IntN(60))
				v := fmt.Appendf(nil, "%s@%d/%d", id, p, len(changelog[p]))
				pad := rng.IntN(200)
				if rng.IntN(50) == 0 {
					pad = 1024
				}
				v = append(v, bytes.Repeat([]byte{'.'}, pad)...)
				pb.overlay.Put(id, statestore.Entry{Value: v})
			}
			pb.overlay.Each(func(id string, e statestore.Entry) { // a snapshot per aggregate per batch
				changelog[p] = append(changelog[p], record{id, e.Value})
			})
			pb.next.Store(int64(len(changelog[p])))
			b.parts = append(b.parts, pb)
		}
		if err := b.apply(); err != nil {
			t.Fatal(err)
		}
		check(step)
		switch rng.IntN(100) {
		case 0: // assigned again: the old assignment's dirty snapshots are left behind
			i := rng.IntN(len(as))
			as[i] = assign(as[i].key.partition)
			restore(as[i].key.partition)
			check(step)
		case 1: // the worker stops: the store then reflects everything
			if err := w.flush(); err != nil {
				t.Fatal(err)
			}
			for p, log := range changelog {
				if next, _ := store.Checkpoint(agg.Name(), p); next != int64(len(log)) {
					t.Fatalf("step %d: after a flush partition %d's checkpoint is %d, its changelog %d long", step, p, next, len(log))
				}
			}
		}
	}
	// Every way to the store was taken.
	for _, reason := range []string{writeEvicted, writeSwept, writeUncached, writeStopped} {
		var m dto.Metric
		if err := w.metrics.storeWrites.WithLabelValues(reason).Write(&m); err != nil || m.GetCounter().GetValue() == 0 {
			t.Errorf("no snapshot written to the store %s", reason)
		}
	}
}
