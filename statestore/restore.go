package statestore

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2/objstorage/objstorageprovider"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Changelog names the topic a partition is restored from and how to reach
// the cluster.
type Changelog struct {
	Topic string
	// Kafka are the client options to connect with (seed brokers, TLS,
	// SASL); Restore sends its own Fetch requests through a client made
	// with them.
	Kafka []kgo.Opt
	// Progress, if set, is called after each batch of restored records is
	// written with its checkpoint, with the records restored so far.
	Progress func(records int)
}

// RestoreStats reports one restore.
type RestoreStats struct {
	From, To int64 // changelog offsets read: [From, To)
	Records  int   // snapshot records applied
	Full     bool  // the local state was dropped and restored from the log start
	Took     time.Duration
}

// Restore brings partition p of type typ up to date: it reads the changelog
// partition (read_committed) from the stored checkpoint to the high
// watermark, and writes every snapshot it finds, with the checkpoint after
// them, in chunks of Options.RestoreBuffer bytes. It reads with Fetch
// requests of its own (partitionReader: no kgo.Record per snapshot) of at
// most RestoreBuffer (up to 64 MiB) each. Each chunk is sorted and written
// as a table that Pebble ingests atomically and durably, checkpoint
// included: a crash in the middle of a long restore keeps every chunk
// before it, and a snapshot never reaches the store without its checkpoint.
//
// When the checkpoint is below the log start offset (records were deleted:
// KAFKA-20663) or above the end (the topic was recreated), the partition's
// local state cannot be trusted to be a prefix of this log: Restore drops it
// and restores from the log start instead of continuing with a silently
// partial store. An offset that goes out of range while reading is an error,
// never a silent reset; the caller retries.
func (s *Store) Restore(ctx context.Context, src Changelog, typ string, p int32) (RestoreStats, error) {
	start := time.Now()
	st := RestoreStats{}
	fail := func(err error) (RestoreStats, error) {
		return st, fmt.Errorf("restore %s/%d from %d: %w", src.Topic, p, st.From, err)
	}
	next, err := s.Checkpoint(typ, p)
	if err != nil {
		return fail(err)
	}
	st.From = next

	cl, err := kgo.NewClient(src.Kafka...)
	if err != nil {
		return fail(err)
	}
	defer cl.Close()
	logStart, end, err := bounds(ctx, kadm.NewClient(cl), src.Topic, p)
	if err != nil {
		return fail(err)
	}
	if next < logStart || next > end {
		if err := s.Drop(typ, p); err != nil {
			return fail(err)
		}
		st.Full, next, st.From = true, logStart, logStart
	}
	st.To = end

	var chunk restoreChunk
	flush := func() error {
		if err := s.writeChunk(typ, p, &chunk, next); err != nil {
			return err
		}
		if src.Progress != nil {
			src.Progress(st.Records)
		}
		return nil
	}
	rd := newPartitionReader(cl, src.Topic, p, next, int32(min(s.restore, 64<<20)))
	rd.reserve = func(n int) { chunk.reserve(typ, n, s.restore/entryBytes+1) }
	for rd.next < end {
		err := rd.read(ctx, func(offset int64, key, value []byte) error {
			chunk.add(typ, p, key, value)
			st.Records++
			if chunk.bytes < s.restore {
				return nil
			}
			next = offset + 1
			return flush()
		})
		if err != nil {
			return fail(err)
		}
		next = rd.next
	}
	if err := flush(); err != nil {
		return fail(err)
	}
	st.Took = time.Since(start)
	return st, nil
}

// restoreChunk is the snapshots a restore holds before writing them: their
// keys one after another in keys, so that a snapshot costs no allocation of
// its own. Both slices grow by what a fetch holds (reserve) and keep their
// room for the next chunk.
type restoreChunk struct {
	keys    []byte
	entries []restored
	bytes   int
}

// restored is one snapshot record read from the changelog: its key is
// keys[start:end] of its chunk; a nil value is a tombstone. head is the
// first 8 bytes of its id, big-endian (zero-padded): every key of a chunk
// has the same prefix, so most comparisons of a sort end at head.
type restored struct {
	head       uint64
	start, end int
	value      []byte
}

// reserve makes room for n more snapshots at once, their ids taken to be
// as long as the last one's, and for at most most in all (n comes from
// batch headers that are not checked yet): growing a chunk record by
// record copied its keys and entries again and again (a tenth of a
// restore's CPU).
func (c *restoreChunk) reserve(typ string, n, most int) {
	if n = min(n, most-len(c.entries)); n <= 0 {
		return
	}
	per := prefixLen(typ) + 16
	if k := len(c.entries); k > 0 {
		per = len(c.key(c.entries[k-1]))
	}
	c.entries = slices.Grow(c.entries, n)
	c.keys = slices.Grow(c.keys, n*per)
}

func (c *restoreChunk) add(typ string, p int32, id, value []byte) {
	var head [8]byte
	copy(head[:], id)
	start := len(c.keys)
	c.keys = append(appendPartitionPrefix(c.keys, 's', typ, p), id...)
	c.entries = append(c.entries, restored{binary.BigEndian.Uint64(head[:]), start, len(c.keys), value})
	c.bytes += len(c.keys) - start + len(value) + entryBytes
}

// entryBytes is what a chunk counts for a snapshot beyond its key and
// value: its entry.
const entryBytes = 48

func (c *restoreChunk) key(e restored) []byte { return c.keys[e.start:e.end] }

func (c *restoreChunk) reset() {
	clear(c.entries) // the values belong to fetched batches
	c.keys, c.entries, c.bytes = c.keys[:0], c.entries[:0], 0
}

// writeChunk writes the chunk's snapshots, the last of each key, and
// partition p's checkpoint next, in one atomic, durable step, and empties
// the chunk. A chunk with snapshots becomes two tables that are ingested
// together: the snapshots, and the checkpoint. (In one table they would
// span from the checkpoint keys ('c' …) to the snapshot keys ('s' …), and
// every partition's table would overlap every other's: Pebble could not
// put them on the last level and would compact them again.) A chunk
// without snapshots (only control records or aborted data were read)
// moves the checkpoint with a batch.
func (s *Store) writeChunk(typ string, p int32, c *restoreChunk, next int64) error {
	checkpoint := binary.BigEndian.AppendUint64(nil, uint64(next))
	defer c.reset()
	if len(c.entries) == 0 {
		b := s.db.NewBatch()
		defer b.Close()
		if err := b.Set(checkpointKey(typ, p), checkpoint, nil); err != nil {
			return err
		}
		return b.Commit(s.durable)
	}
	// Of one key's snapshots the last read stays last: keys are appended
	// in the order read, so start breaks ties (cheaper than a stable sort).
	slices.SortFunc(c.entries, func(a, b restored) int {
		if a.head != b.head {
			return cmp.Compare(a.head, b.head)
		}
		return cmp.Or(bytes.Compare(c.key(a), c.key(b)), cmp.Compare(a.start, b.start))
	})
	name := fmt.Sprintf("%s-%d-%d", hex.EncodeToString([]byte(typ)), p, next)
	snapshots, err := s.writeTable(name+".sst", func(w *sstable.Writer) error {
		for i, e := range c.entries {
			var err error
			switch {
			case i+1 < len(c.entries) && bytes.Equal(c.key(e), c.key(c.entries[i+1])):
				// a later snapshot of the same aggregate follows
			case e.value == nil:
				err = w.Delete(c.key(e))
			default:
				err = w.Set(c.key(e), e.value)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	defer os.Remove(snapshots) // ingesting links it into the store
	ckpt, err := s.writeTable(name+".checkpoint.sst", func(w *sstable.Writer) error {
		return w.Set(checkpointKey(typ, p), checkpoint)
	})
	if err != nil {
		return err
	}
	defer os.Remove(ckpt)
	if err := s.db.Ingest(context.Background(), []string{snapshots, ckpt}); err != nil {
		return fmt.Errorf("ingest %s: %w", snapshots, err)
	}
	return nil
}

// writeTable writes a table named name in the restore's temp dir with
// write, and returns its path.
func (s *Store) writeTable(name string, write func(*sstable.Writer) error) (string, error) {
	path := filepath.Join(s.tmp, name)
	f, err := vfs.Default.Create(path, vfs.WriteCategoryUnspecified)
	if err != nil {
		return "", err
	}
	w := sstable.NewWriter(objstorageprovider.NewFileWritable(f), s.opts.MakeWriterOptions(0, s.db.TableFormat()))
	err = write(w)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return "", fmt.Errorf("write table %s: %w", path, err)
	}
	return path, nil
}

// bounds returns the log start offset and the high watermark of a
// partition. Restore reads to the high watermark, not to the last stable
// offset: a transaction whose EndTxn returned may not have its markers
// written yet, and its snapshots are below the high watermark but above the
// last stable offset. Reading read_committed to the high watermark waits for
// every transaction open at that moment to end, then sees its markers.
func bounds(ctx context.Context, adm *kadm.Client, topic string, p int32) (int64, int64, error) {
	starts, err := adm.ListStartOffsets(ctx, topic)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return 0, 0, fmt.Errorf("list start offsets: %w", err)
	}
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return 0, 0, fmt.Errorf("list end offsets: %w", err)
	}
	s, ok1 := starts.Lookup(topic, p)
	e, ok2 := ends.Lookup(topic, p)
	if !ok1 || !ok2 {
		return 0, 0, fmt.Errorf("partition %d of %s does not exist", p, topic)
	}
	return s.Offset, e.Offset, nil
}
