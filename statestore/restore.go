package statestore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Changelog names the topic a partition is restored from and how to reach
// the cluster.
type Changelog struct {
	Topic string
	// Kafka are the client options to connect with (seed brokers, TLS,
	// SASL); Restore adds its own consuming options.
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

// restoreBatch is how many records Restore writes per Pebble batch (with
// the checkpoint after them). Each batch is synced, whatever Options.Sync
// says: a crash in the middle of a long restore keeps every batch before it,
// for the price of one fsync per batch.
const restoreBatch = 4096

// Restore brings partition p of type typ up to date: it reads the changelog
// partition (read_committed) from the stored checkpoint to the high
// watermark, and writes every snapshot it finds, with the checkpoint after each
// batch.
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

	cl, err := kgo.NewClient(append(src.Kafka[:len(src.Kafka):len(src.Kafka)],
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.KeepControlRecords(),
		kgo.ConsumeResetOffset(kgo.NoResetOffset()),
	)...)
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
	cl.AddConsumePartitions(map[string]map[int32]kgo.Offset{src.Topic: {p: kgo.NewOffset().At(next)}})
	st.To = end

	b := s.db.NewBatch()
	defer func() { b.Close() }()
	pending := 0
	flush := func() error {
		if err := b.Set(checkpointKey(typ, p), binary.BigEndian.AppendUint64(nil, uint64(next)), nil); err != nil {
			return err
		}
		if err := b.Commit(pebble.Sync); err != nil {
			return err
		}
		b.Close()
		b, pending = s.db.NewBatch(), 0
		if src.Progress != nil {
			src.Progress(st.Records)
		}
		return nil
	}
	for next < end {
		fetches := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return fail(err)
		}
		var ferr error
		fetches.EachError(func(_ string, _ int32, err error) { ferr = errors.Join(ferr, err) })
		if ferr != nil {
			return fail(ferr)
		}
		for it := fetches.RecordIter(); !it.Done(); {
			r := it.Next()
			next = r.Offset + 1
			if r.Attrs.IsControl() {
				continue
			}
			if err := put(b, snapshotKey(typ, p, string(r.Key)), r.Value); err != nil {
				return fail(err)
			}
			st.Records++
			if pending++; pending >= restoreBatch {
				if err := flush(); err != nil {
					return fail(err)
				}
			}
		}
	}
	if err := flush(); err != nil {
		return fail(err)
	}
	st.Took = time.Since(start)
	return st, nil
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
