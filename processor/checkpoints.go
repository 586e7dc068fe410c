package processor

import (
	"fmt"
	"sync"

	"github.com/deciderhq/decider/statestore"
)

// How the store follows the commits, and what keeps it a prefix of the
// changelog.
//
// A committed transaction's snapshots go to the state cache, dirty (see
// stateCache); they reach Pebble later: when the cache evicts them, or when
// a sweep passes them. A sweep goes through a part of the ring after each
// committed batch, as much of it as the batch put bytes times the ring's
// size over Config.CheckpointBytes, so that the ring is gone round once per
// CheckpointBytes of snapshots committed. An aggregate changed by many
// transactions meanwhile is written to Pebble once. (Writing each batch's
// snapshots to Pebble at its commit took a sixth of the worker's CPU flat
// out, inserting into the memtable, flushing and compacting it.)
//
// A partition's checkpoint in the store says from where its changelog must
// be read again; what must hold for each of its aggregates is that its
// latest committed snapshot is in the store, or at or after the
// checkpoint in the changelog. So when a round of the sweep begins, the
// worker notes each current assignment's changelog offset after its last
// committed snapshot; when the round ends, every aggregate whose latest
// snapshot comes before that offset was in the ring when the round began
// (its batch had been put), and the round has written it, or the cache
// spilled it when evicting it; the noted offset becomes the checkpoint, in
// the same Pebble batch as the round's last writes. Every write is a
// committed snapshot, so the store is never ahead of Kafka; a crash loses
// the dirty entries, which a restart reads again from the changelog, from
// a checkpoint at most about two rounds behind (Pebble runs without its WAL:
// what reaches the disk is a prefix of these batches, in order, each
// partition's checkpoint after the writes it stands for).
//
// Dirty entries of an assignment that is over (revoked, or assigned again
// to be restored) are never written: a later version of the aggregate may
// be in the store by then. The partition's checkpoint already covers them,
// and whoever restores it next reads them from the changelog. A worker
// that stops writes every dirty entry and every checkpoint first, so that
// its next start restores nothing.
type checkpoints struct {
	noted map[*assigned]int64 // of the round under way: each assignment's committed changelog offset when it began; nil before the first
}

// storeWrite is one Pebble batch of the worker's: a committed batch's
// snapshots that the cache does not hold, what the cache spilled, and the
// checkpoints. It holds the lock of every partition it writes until it is
// committed or closed, so that no restore of one runs meanwhile.
type storeWrite struct {
	w      *Worker
	writes *statestore.Writes
	gens   map[uint64]*assigned // the current assignments when it began, by generation
	owned  map[*assigned]bool   // the assignments asked about, and whether each is current
	locked map[partitionKey]bool
	locks  []*sync.Mutex
	err    error // the first write that failed

	reason string         // why the snapshots written now are written (writeEvicted, …)
	counts map[string]int // snapshots written, by reason
}

func (w *Worker) newStoreWrite(size int) *storeWrite {
	s := &storeWrite{w: w, writes: w.cfg.Store.NewWrites(size), gens: map[uint64]*assigned{}, owned: map[*assigned]bool{}, locked: map[partitionKey]bool{}, counts: map[string]int{}}
	w.mu.Lock()
	for _, a := range w.parts {
		s.gens[a.gen] = a
	}
	w.mu.Unlock()
	return s
}

// own locks a's partition and reports whether a is its current
// assignment. A partition whose lock is held is being restored: by a later
// assignment, since a's own restore was over before a had anything to write
// (only restores and this loop, one write at a time, take these locks).
func (s *storeWrite) own(a *assigned) bool {
	if owned, ok := s.owned[a]; ok {
		return owned
	}
	if !s.locked[a.key] {
		lock := s.w.lock(a.key)
		if !lock.TryLock() {
			s.owned[a] = false
			return false
		}
		s.locked[a.key] = true
		s.locks = append(s.locks, lock)
	}
	cur, ok := s.w.partition(a.key.topic, a.key.partition)
	s.owned[a] = ok && cur == a
	return s.owned[a]
}

// snapshot writes the snapshot v of aggregate id of a.
func (s *storeWrite) snapshot(a *assigned, id string, v []byte) {
	if err := s.writes.Snapshot(a.agg.Name(), a.key.partition, id, v); err != nil && s.err == nil {
		s.err = err
	}
	s.counts[s.reason]++
}

// checkpoint writes next as a's partition's checkpoint.
func (s *storeWrite) checkpoint(a *assigned, next int64) {
	if err := s.writes.Checkpoint(a.agg.Name(), a.key.partition, next); err != nil && s.err == nil {
		s.err = err
	}
}

// spill writes a dirty snapshot the cache lets go of, if its assignment is
// still current (see checkpoints).
func (s *storeWrite) spill(gen uint64, id string, v []byte) {
	if a := s.gens[gen]; a != nil && s.own(a) {
		s.snapshot(a, id, v)
	}
}

// commit writes what was written to the store, and releases the locks.
func (s *storeWrite) commit() error {
	defer s.close()
	if s.err != nil {
		return s.err
	}
	if err := s.writes.Commit(); err != nil {
		return err
	}
	for reason, n := range s.counts {
		s.w.metrics.storeWrites.WithLabelValues(reason).Add(float64(n))
	}
	return nil
}

// close drops what was not committed and releases the locks.
func (s *storeWrite) close() {
	s.writes.Close()
	for _, l := range s.locks {
		l.Unlock()
	}
	s.locks = nil
}

// sweep goes on with the round after a committed batch that put bytes of
// snapshots in the cache, and ends it (writing the checkpoints it noted)
// when the ring is gone round. With the cache off, every snapshot was
// written with its batch: the checkpoints of the batch's partitions are
// written at once.
func (c *checkpoints) sweep(s *storeWrite, put int, batch []*assigned) {
	cache := s.w.cache
	if cache.nsegs == 0 {
		for _, a := range batch {
			s.checkpoint(a, a.committed)
		}
		return
	}
	if c.noted == nil {
		c.note(s)
	}
	n := int(int64(put)*int64(cache.used())/s.w.cfg.CheckpointBytes) + 1
	s.reason = writeSwept
	if !cache.sweep(n, s.spill) {
		return
	}
	for a, next := range c.noted {
		if s.own(a) {
			s.checkpoint(a, next)
		}
	}
	c.note(s)
}

// note begins a round: it notes where each current assignment's committed
// changelog stands.
func (c *checkpoints) note(s *storeWrite) {
	s.w.cache.beginRound()
	c.noted = map[*assigned]int64{}
	for _, a := range s.gens {
		if a.committed > 0 {
			c.noted[a] = a.committed
		}
	}
}

// flush writes every dirty snapshot of the cache and the checkpoint of
// every partition the worker committed to, so that the store reflects
// every commit (a worker that stops, see checkpoints). Call it when no
// batch is being applied.
func (w *Worker) flush() error {
	s := w.newStoreWrite(w.cache.used())
	defer s.close()
	s.reason = writeStopped
	for !w.cache.sweep(0, s.spill) { // the rest of this round
	}
	w.cache.sweep(0, s.spill) // and the part of the ring it had passed
	for _, a := range s.gens {
		if a.committed > 0 && s.own(a) {
			s.checkpoint(a, a.committed)
		}
	}
	w.checkpoints.noted = nil
	if err := s.commit(); err != nil {
		return fmt.Errorf("write the state cache to the store: %w", err)
	}
	return nil
}
