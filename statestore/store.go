package statestore

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
)

// ErrNotFound is returned by Get for an aggregate the store has no snapshot
// of.
var ErrNotFound = errors.New("statestore: not found")

// Options configures a Store. The zero value is a good default.
type Options struct {
	// CacheSize is Pebble's block cache in bytes. Default 256 MiB: a Get
	// that misses it reads index, filter and data blocks from the files
	// (measured with a million aggregates: 20.9 µs of CPU per command with
	// 256 MiB, 31.5 µs with 128 MiB, 37 µs with 64 MiB).
	CacheSize int64
	// MemTableSize is the size of Pebble's memtable, up to two of which
	// are held in memory. Default 64 MiB. (It was chosen when a restore
	// wrote through the memtable, which it no longer does. With the
	// worker's writes alone, `decider bench --loads 1000,10000 --duration
	// 6s` twice each gave the same throughput with 4, 16 and 64 MiB within
	// the noise; 4 MiB doubled the p99 at 10k/s, flushing four times as
	// often.)
	MemTableSize uint64
	// WAL keeps Pebble's write-ahead log. Off by default: the store is a
	// cache of the changelog, and without the log a crash of the process
	// loses the writes still in the memtables (at most two MemTableSize of
	// them), which the next restore reads again from the changelog. What is
	// on disk stays a prefix of each partition's changelog: a checkpoint is
	// in the batch of the snapshots it stands for or after it (the writer's
	// part, see Writes), a memtable is flushed whole and in order, and an
	// ingested restore table waits for the flush of a memtable holding its
	// partition's checkpoint. Close flushes the memtables, so a clean stop
	// restores nothing. (The log's writes were 5% of the worker's CPU flat
	// out, in syscalls.)
	WAL bool
	// Sync makes every Apply durable with fsync before it returns, and
	// implies WAL. Off by default: a write lost in a machine crash is
	// restored from the changelog from the checkpoint, which is lost with
	// it.
	Sync bool
	// RestoreBuffer is how many bytes of snapshots one partition's restore
	// holds in memory before it writes them, sorted, as a table that Pebble
	// ingests whole (no memtable, WAL or flush). Larger means fewer,
	// larger tables that overlap less; a restore holds about this much at
	// a time. Default 8 MiB.
	RestoreBuffer int
}

// Store is the local state of a worker: the latest snapshot of every
// aggregate of the partitions it owns (or owned), and for each partition the
// checkpoint, the next changelog offset not yet reflected in the store.
//
// A checkpoint is written with the snapshots it stands for, or after them
// (Writes, Apply), or in tables ingested together with them (Restore), so
// the store always holds a prefix of the committed changelog of each
// partition: never ahead of Kafka, possibly behind.
//
// Store is safe for concurrent use; callers keep writes of one partition in
// one goroutine at a time (Writes, Apply, Restore and Drop of the same
// partition must not overlap).
type Store struct {
	db      *pebble.DB
	opts    *pebble.Options
	cache   *pebble.Cache
	wo      *pebble.WriteOptions // of Apply
	durable *pebble.WriteOptions // of a restore's batch: synced when there is a WAL
	tmp     string               // where a restore writes its tables before ingesting them
	restore int                  // Options.RestoreBuffer
}

// Open opens (creating if needed) the store in dir.
func Open(dir string, o *Options) (*Store, error) {
	if o == nil {
		o = &Options{}
	}
	size := o.CacheSize
	if size <= 0 {
		size = 256 << 20
	}
	memtable := o.MemTableSize
	if memtable == 0 {
		memtable = 64 << 20
	}
	restore := o.RestoreBuffer
	if restore <= 0 {
		restore = 8 << 20
	}
	cache := pebble.NewCache(size)
	opts := &pebble.Options{Cache: cache, Logger: quietLogger{}, MemTableSize: memtable, DisableWAL: !o.WAL && !o.Sync}
	// Bloom filters on every level: a Get of an aggregate that is in no
	// memtable otherwise reads a data block of every level whose file
	// spans its key, and aggregate ids spread over all of them (a tenth
	// less CPU per command with a million aggregates). The other levels
	// inherit L0's policy.
	opts.Levels[0].FilterPolicy = bloom.FilterPolicy(10)
	opts.EnsureDefaults()
	db, err := pebble.Open(dir, opts)
	if err != nil {
		cache.Unref()
		return nil, fmt.Errorf("open state store %s: %w", dir, err)
	}
	// Tables a restore did not get to ingest before a crash are garbage.
	// Only now, with Pebble's lock on dir held: another process's
	// restore may be writing here otherwise.
	tmp := filepath.Join(dir, "restore-tmp")
	if err := errors.Join(os.RemoveAll(tmp), os.MkdirAll(tmp, 0o755)); err != nil {
		_ = db.Close()
		cache.Unref()
		return nil, fmt.Errorf("open state store %s: %w", dir, err)
	}
	wo, durable := pebble.NoSync, pebble.NoSync
	if o.Sync {
		wo = pebble.Sync
	}
	if !opts.DisableWAL {
		durable = pebble.Sync
	}
	return &Store{db: db, opts: opts, cache: cache, wo: wo, durable: durable, tmp: tmp, restore: restore}, nil
}

// Close flushes and closes the store. Call it once.
func (s *Store) Close() error {
	var err error
	if s.opts.DisableWAL { // the memtables' writes are nowhere else on disk
		err = s.db.Flush()
	}
	err = errors.Join(err, s.db.Close())
	s.cache.Unref()
	return err
}

// Key layout: 's' type 0x00 partition(4, big endian) id → snapshot record
// value; 'c' type 0x00 partition(4) → checkpoint (8, big endian).
func partitionPrefix(kind byte, typ string, p int32) []byte {
	return appendPartitionPrefix(make([]byte, 0, prefixLen(typ)+16), kind, typ, p)
}

// prefixLen is the length of a partition prefix of typ.
func prefixLen(typ string) int { return len(typ) + 6 }

func appendPartitionPrefix(k []byte, kind byte, typ string, p int32) []byte {
	k = append(k, kind)
	k = append(k, typ...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint32(k, uint32(p))
}

func snapshotKey(typ string, p int32, id string) []byte {
	return append(partitionPrefix('s', typ, p), id...)
}

func checkpointKey(typ string, p int32) []byte { return partitionPrefix('c', typ, p) }

// Get returns the snapshot record value of aggregate id in partition p of
// type typ, or ErrNotFound.
func (s *Store) Get(typ string, p int32, id string) ([]byte, error) {
	v, closer, err := s.db.Get(snapshotKey(typ, p, id))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get %s/%d/%s: %w", typ, p, id, err)
	}
	out := append([]byte(nil), v...)
	return out, closer.Close()
}

// Checkpoint returns the next changelog offset of partition p of typ that
// the store does not reflect yet: 0 for a partition it never saw.
func (s *Store) Checkpoint(typ string, p int32) (int64, error) {
	v, closer, err := s.db.Get(checkpointKey(typ, p))
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("checkpoint %s/%d: %w", typ, p, err)
	}
	defer closer.Close()
	if len(v) != 8 {
		return 0, fmt.Errorf("checkpoint %s/%d: corrupt value of %d bytes", typ, p, len(v))
	}
	return int64(binary.BigEndian.Uint64(v)), nil
}

// Commit is what one committed transaction wrote to one partition: its
// overlay, and Next, the changelog offset after the overlay's snapshots (the
// partition's new checkpoint).
type Commit struct {
	Overlay *Overlay
	Next    int64
}

// Apply writes the snapshots of every commit's overlay and each partition's
// checkpoint in one Pebble batch. Call it only once the transaction that
// produced those snapshots is committed in Kafka.
func (s *Store) Apply(cs ...Commit) error {
	size := 0
	for _, c := range cs {
		o := c.Overlay
		for i, id := range o.ids {
			size += writeSize(o.typ, id, len(o.entries[i].Value))
		}
		size += writeSize(o.typ, "", 8) // the checkpoint
	}
	w := s.NewWrites(size)
	defer w.Close()
	for _, c := range cs {
		o := c.Overlay
		for i, id := range o.ids {
			if err := w.Snapshot(o.typ, o.partition, id, o.entries[i].Value); err != nil {
				return err
			}
		}
		if err := w.Checkpoint(o.typ, o.partition, c.Next); err != nil {
			return err
		}
	}
	return w.Commit()
}

// Writes are snapshots and checkpoints written to the store together, in
// one Pebble batch: a crash keeps all of them or none, and writes
// committed one after another reach the disk in that order. Make them with
// NewWrites; a Writes is used by one goroutine.
//
// What keeps the store a prefix of the changelog is the caller's order: a
// partition's checkpoint is written only with, or after, every snapshot
// before it that the store does not hold yet (or one of the same aggregate
// that replaced it).
type Writes struct {
	s   *Store
	b   *pebble.Batch
	key []byte // scratch
	n   int    // snapshots and checkpoints written
}

// NewWrites returns an empty set of writes with room for about size bytes
// of snapshots: growing a batch copies it, again and again.
func (s *Store) NewWrites(size int) *Writes {
	return &Writes{s: s, b: s.db.NewBatchWithSize(12 + size)}
}

// writeSize bounds what a write of a value of n bytes to a key of
// aggregate id of type typ takes in a batch.
func writeSize(typ, id string, n int) int {
	return 1 + 2*binary.MaxVarintLen32 + prefixLen(typ) + len(id) + n
}

// Snapshot writes value as the snapshot of aggregate id in partition p of
// type typ (a nil value deletes it). value is copied.
func (w *Writes) Snapshot(typ string, p int32, id string, value []byte) error {
	w.key = append(appendPartitionPrefix(w.key[:0], 's', typ, p), id...)
	if err := put(w.b, w.key, value); err != nil {
		return fmt.Errorf("write %s/%d/%s: %w", typ, p, id, err)
	}
	w.n++
	return nil
}

// Checkpoint writes next as the checkpoint of partition p of type typ:
// the changelog from next on is what the store may not reflect.
func (w *Writes) Checkpoint(typ string, p int32, next int64) error {
	w.key = appendPartitionPrefix(w.key[:0], 'c', typ, p)
	if err := w.b.Set(w.key, binary.BigEndian.AppendUint64(nil, uint64(next)), nil); err != nil {
		return fmt.Errorf("checkpoint %s/%d: %w", typ, p, err)
	}
	w.n++
	return nil
}

// Commit writes them to the store and closes w. Call it only once the
// transactions that produced the snapshots are committed in Kafka.
func (w *Writes) Commit() error {
	defer w.Close()
	if w.n == 0 {
		return nil
	}
	if err := w.b.Commit(w.s.wo); err != nil {
		return fmt.Errorf("write %d snapshots and checkpoints: %w", w.n, err)
	}
	return nil
}

// Close drops what was not committed. It may be called more than once.
func (w *Writes) Close() {
	if w.b != nil {
		_ = w.b.Close()
		w.b = nil
	}
}

func put(b *pebble.Batch, key, value []byte) error {
	if value == nil {
		return b.Delete(key, nil)
	}
	return b.Set(key, value, nil)
}

// Drop deletes every snapshot and the checkpoint of partition p of typ.
func (s *Store) Drop(typ string, p int32) error {
	b := s.db.NewBatch()
	defer b.Close()
	for _, kind := range []byte{'s', 'c'} {
		if err := b.DeleteRange(partitionPrefix(kind, typ, p), partitionPrefix(kind, typ, p+1), nil); err != nil {
			return fmt.Errorf("drop %s/%d: %w", typ, p, err)
		}
	}
	if err := b.Commit(s.wo); err != nil {
		return fmt.Errorf("drop %s/%d: %w", typ, p, err)
	}
	return nil
}

// EachID calls fn with the id of every snapshot stored for partition p of
// typ, in key order, until ctx is cancelled. The id is valid only during
// the call.
func (s *Store) EachID(ctx context.Context, typ string, p int32, fn func(id []byte)) error {
	lower := partitionPrefix('s', typ, p)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: partitionPrefix('s', typ, p+1)})
	if err != nil {
		return fmt.Errorf("ids of %s/%d: %w", typ, p, err)
	}
	n := 0
	for it.First(); it.Valid(); it.Next() {
		if n++; n%4096 == 0 && ctx.Err() != nil {
			break
		}
		fn(it.Key()[len(lower):])
	}
	if err := cmp.Or(ctx.Err(), it.Error()); err != nil {
		_ = it.Close()
		return fmt.Errorf("ids of %s/%d: %w", typ, p, err)
	}
	return it.Close()
}

// Count returns the number of snapshots stored for partition p of typ.
func (s *Store) Count(typ string, p int32) (int, error) {
	n := 0
	err := s.EachID(context.Background(), typ, p, func([]byte) { n++ })
	return n, err
}

// quietLogger drops Pebble's informational logs; errors surface as returned
// errors, and Fatalf still stops the process as Pebble requires.
type quietLogger struct{}

func (quietLogger) Infof(string, ...any)  {}
func (quietLogger) Errorf(string, ...any) {}
func (quietLogger) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf("pebble: "+format, args...))
}

// Stats are figures of a store for monitoring.
type Stats struct {
	DiskBytes   uint64 // space the store takes on disk
	CacheBytes  int64  // bytes in the block cache
	CacheHits   int64  // block cache hits since Open
	CacheMisses int64  // block cache misses since Open
}

// Stats returns the store's current figures.
func (s *Store) Stats() Stats {
	m := s.db.Metrics()
	return Stats{
		DiskBytes:   m.DiskSpaceUsage(),
		CacheBytes:  m.BlockCache.Size,
		CacheHits:   m.BlockCache.Hits,
		CacheMisses: m.BlockCache.Misses,
	}
}
