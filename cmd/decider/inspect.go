package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/deciderhq/decider/examples/accounts"
	"github.com/deciderhq/decider/statestore"
	"github.com/deciderhq/decider/topology"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

const inspectUsage = `Prints the latest snapshot of one aggregate as JSON: where it is in the
snapshots topic (partition, offset, time), its version (the number of its
events), commandOffset (the offset of the last command applied to it: a
command at or below it is never decided again), its state as Avro JSON and
"recent", the dedupe window of its last replies (a command id in it gets
that reply again; their aggregateId is the snapshot's, and empty but in
replies kept from workers that wrote it).

The snapshot is the newest record keyed by the id in the partition the id
hashes to, found by reading that partition backwards from its end in
growing chunks, so a long topic is not read whole.

With --data-dir, also the copy in that worker's local store (DIR/state,
opened for reading; stop the worker first, Pebble allows one process) and
whether it agrees with the topic: "agrees" false with "behind" true is a
store that restores the newer snapshot when the worker next gets the
partition; false without "behind" is a store that holds another snapshot
than its changelog (delete DIR/state and it restores from the topic).

Examples:
  decider inspect --id acc-1
  decider inspect --brokers k1:9092 --app bank --aggregate account --id acc-1 --data-dir /var/lib/decider
`

func runInspect(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("inspect")
	kafkaOpts := kafkaFlags(fs)
	appName := fs.String("app", "bank", "app name")
	aggregate := fs.String("aggregate", accounts.Name, "aggregate type")
	id := fs.String("id", "", "aggregate id (required)")
	dataDir := fs.String("data-dir", "", "a worker's data dir: compare with its local store")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *id == "" {
		return errors.New("--id is required")
	}
	c, app, agg, err := dialAggregate(ctx, kafkaOpts, *appName, *aggregate)
	if err != nil {
		return err
	}
	defer c.cl.Close()
	kafka, adm := c.kafka, c.adm
	topic := app.Topics(agg).Snapshots
	p := topology.Partition([]byte(*id), agg.Partitions())
	rec, err := latestSnapshot(ctx, kafka, adm, topic, p, *id)
	if err != nil {
		return err
	}
	if rec == nil {
		return fmt.Errorf("no snapshot of %s %q in %s/%d", agg.Name(), *id, topic, p)
	}
	out := inspection{Aggregate: agg.Name(), ID: *id, Topic: topic, Partition: p, Offset: rec.Offset, Timestamp: rec.Timestamp, Deleted: rec.Value == nil}
	if !out.Deleted {
		v, err := viewSnapshot(agg, rec.Value)
		if err != nil {
			return fmt.Errorf("snapshot at %s/%d@%d: %w", topic, p, rec.Offset, err)
		}
		out.snapshotView = &v
	}
	if *dataDir != "" {
		if out.Local, err = inspectLocal(agg, filepath.Join(*dataDir, "state"), p, *id, rec); err != nil {
			return err
		}
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s\n", b)
	return err
}

// inspection is what inspect prints.
type inspection struct {
	Aggregate string    `json:"aggregate"`
	ID        string    `json:"id"`
	Topic     string    `json:"topic"`
	Partition int32     `json:"partition"`
	Offset    int64     `json:"offset"`
	Timestamp time.Time `json:"timestamp"`
	Deleted   bool      `json:"deleted,omitempty"` // the latest record is a tombstone
	*snapshotView
	Local *localSnapshot `json:"local,omitempty"`
}

// localSnapshot is an aggregate's snapshot in a worker's local store.
type localSnapshot struct {
	Dir        string        `json:"dir"`
	Checkpoint int64         `json:"checkpoint"` // the next changelog offset the store does not reflect
	Found      bool          `json:"found"`
	Snapshot   *snapshotView `json:"snapshot,omitempty"`
	Agrees     bool          `json:"agrees"` // the store holds the topic's latest snapshot record, byte for byte
	Behind     bool          `json:"behind"` // the store has not restored the topic's latest snapshot yet
}

// inspectLocal reads aggregate id of partition p from the store in dir,
// and compares it with rec, the topic's latest snapshot record.
func inspectLocal(agg *topology.Aggregate, dir string, p int32, id string, rec *kgo.Record) (*localSnapshot, error) {
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("--data-dir: %w", err)
	}
	store, err := statestore.Open(dir, nil)
	if err != nil {
		return nil, fmt.Errorf("--data-dir (is its worker running?): %w", err)
	}
	defer store.Close()
	l := &localSnapshot{Dir: dir}
	if l.Checkpoint, err = store.Checkpoint(agg.Name(), p); err != nil {
		return nil, err
	}
	v, err := store.Get(agg.Name(), p, id)
	switch {
	case errors.Is(err, statestore.ErrNotFound):
	case err != nil:
		return nil, err
	default:
		l.Found = true
		s, err := viewSnapshot(agg, v)
		if err != nil {
			return nil, fmt.Errorf("snapshot of %q in %s: %w", id, dir, err)
		}
		l.Snapshot = &s
	}
	l.Agrees = l.Found == (rec.Value != nil) && bytes.Equal(v, rec.Value)
	l.Behind = l.Checkpoint <= rec.Offset
	return l, nil
}

// latestSnapshot returns a copy of the newest record keyed by id in
// partition p of topic, or nil when there is none. It reads the partition
// backwards from its last stable offset in chunks that grow fourfold, from
// 256 offsets to 64Ki: a compacted changelog holds one record per
// aggregate plus what compaction has not reached yet.
func latestSnapshot(ctx context.Context, kafka []kgo.Opt, adm *kadm.Client, topic string, p int32, id string) (*kgo.Record, error) {
	spans, err := listSpans(ctx, adm, topic)
	if err != nil {
		return nil, err
	}
	s, ok := spans[p]
	if !ok {
		return nil, fmt.Errorf("%s has no partition %d", topic, p)
	}
	var found *kgo.Record
	for chunk, end := int64(256), s.end; end > s.start && found == nil; chunk = min(chunk*4, 1<<16) {
		start := max(s.start, end-chunk)
		stalled, err := readSpans(ctx, kafka, map[string]map[int32]span{topic: {p: {start, end}}}, 10*time.Second, func(r *kgo.Record) {
			if string(r.Key) == id {
				c := *r
				c.Key, c.Value, c.Headers = slices.Clone(r.Key), slices.Clone(r.Value), slices.Clone(r.Headers)
				found = &c
			}
		})
		if err != nil {
			return nil, err
		}
		if len(stalled) > 0 {
			return nil, fmt.Errorf("%s/%d: nothing read before offset %d (an open transaction?)", topic, p, end)
		}
		end = start
	}
	return found, nil
}
