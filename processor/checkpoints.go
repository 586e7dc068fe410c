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
// let go of it when evicting it, and it was written then; the noted offset
// becomes the checkpoint, in the same Pebble batch as the round's last
// writes.
//
// What the cache lets go of (evicted, swept, or too big for it) waits in
// its pending list, readable, until the Pebble batch that writes it is
// committed: a read meanwhile (read.go) must find it there rather than an
// older snapshot in Pebble. Every write is a
// committed snapshot, so the store is never ahead of Kafka; a crash loses
// the dirty entries, which a restart reads again from the changelog, from
// a checkpoint at most about two rounds behind (Pebble runs without its WAL:
// what reaches the disk is a prefix of these batches, in order, each
// partition's checkpoint after the writes it stands for).
//
// Dirty entries of an assignment that is over (revoked, or assigned again
// to be restored) are not written once it is: a later version of the
// aggregate may be in the store by then. The partition's checkpoint
// already covers them, and whoever restores it next reads them from the
// changelog. (A write that began while the assignment was current holds
// its partition's lock, so a restore waits for it.) A worker that stops
// writes every dirty entry and the checkpoint of every partition it still
// holds first, so that its next start restores nothing of those. After a
// write to the store failed, nothing more is written (storeWrite.commit).
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

	stopping bool           // the write of a worker that stops
	counts   map[string]int // snapshots written, by reason (writeEvicted, …)
}

// newStoreWrite begins a store write. There is one at a time (the loop's
// apply, or the flush after it), and its maps are the worker's, emptied
// and kept: made anew for each committed batch and grown as they were
// filled, newStoreWrite and own took 1.6% of the worker's CPU at 10k
// commands/s, 1.2% with the maps kept.
func (w *Worker) newStoreWrite(size int) *storeWrite {
	s := &w.storeWrite
	if s.gens == nil {
		*s = storeWrite{w: w, gens: map[uint64]*assigned{}, owned: map[*assigned]bool{}, locked: map[partitionKey]bool{}, counts: map[string]int{}}
	}
	s.writes, s.err, s.stopping = w.cfg.Store.NewWrites(size), nil, false
	clear(s.gens)
	clear(s.owned)
	clear(s.locked)
	clear(s.counts)
	w.mu.Lock()
	for _, a := range w.parts {
		s.gens[a.gen] = a
	}
	w.mu.Unlock()
	return s
}

// own reports whether a is its partition's current assignment, and if so
// locks the partition, waiting for a restore of it that is ending (one of
// an earlier assignment, cancelled; or of a later one, which makes a no
// longer current). Restores take nothing else, and the cache's lock is not
// held here: no deadlock.
func (s *storeWrite) own(a *assigned) bool {
	if owned, ok := s.owned[a]; ok {
		return owned
	}
	current := func() bool {
		cur, ok := s.w.partition(a.key.topic, a.key.partition)
		return ok && cur == a
	}
	if current() && !s.locked[a.key] {
		a.lock.Lock()
		s.locked[a.key] = true
		s.locks = append(s.locks, a.lock)
	}
	s.owned[a] = s.locked[a.key] && current()
	return s.owned[a]
}

// Why the cache let go of a snapshot: the label of
// decider_state_store_writes_total.
var writeReasons = map[uint32]string{pendingEvicted: writeEvicted, pendingSwept: writeSwept, pendingUncached: writeUncached}

// write writes a snapshot the cache let go of (see stateCache.drain), if
// its assignment is still current (see checkpoints).
func (s *storeWrite) write(gen uint64, id string, v []byte, why uint32) {
	a := s.gens[gen]
	if a == nil || !s.own(a) {
		return
	}
	if err := s.writes.Snapshot(a.agg.Name(), a.key.partition, id, v); err != nil && s.err == nil {
		s.err = err
	}
	reason := writeReasons[why]
	if s.stopping {
		reason = writeStopped
	}
	s.counts[reason]++
}

// checkpoint writes next as a's partition's checkpoint.
func (s *storeWrite) checkpoint(a *assigned, next int64) {
	if err := s.writes.Checkpoint(a.agg.Name(), a.key.partition, next); err != nil && s.err == nil {
		s.err = err
	}
}

// commit writes what was written to the store, and releases the locks.
// After a failure the worker writes nothing more to the store: what the
// write held is no longer in the cache, so a later checkpoint could pass
// snapshots the store never got (a restart restores them).
func (s *storeWrite) commit() error {
	defer s.close()
	err := s.err
	if err == nil {
		err = s.writes.Commit()
	}
	if err != nil {
		s.w.storeFailed = true
		return err
	}
	s.w.cache.settle()
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
	clear(s.locks)
	s.locks = s.locks[:0]
}

// sweep goes on with the round after a committed batch that put bytes of
// snapshots in the cache, and ends it (writing the checkpoints it noted)
// when the ring is gone round. With the cache off, every snapshot was
// written with its batch: the checkpoints of the batch's partitions are
// written at once.
func (c *checkpoints) sweep(s *storeWrite, put int, batch []*assigned) {
	cache := s.w.cache
	if cache.nsegs == 0 {
		cache.drain(s.write)
		for _, a := range batch {
			s.checkpoint(a, a.committed)
		}
		return
	}
	if c.noted == nil {
		c.note(s)
	}
	round := cache.sweep(int(int64(put)*int64(cache.used())/s.w.cfg.CheckpointBytes) + 1)
	cache.drain(s.write) // what the batch's puts let go of, then what the sweep passed
	if !round {
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
	if w.storeFailed {
		return nil // see storeWrite.commit
	}
	s := w.newStoreWrite(0) // most of the ring may be clean: the batch grows with what is dirty
	defer s.close()
	s.stopping = true
	for !w.cache.sweep(0) { // the rest of this round
	}
	w.cache.sweep(0) // and the part of the ring it had passed
	w.cache.drain(s.write)
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
