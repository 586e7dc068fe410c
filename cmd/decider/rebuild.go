package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	"github.com/deciderhq/decider/schemas"
	"github.com/deciderhq/decider/topology"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

const rebuildUsage = `Rebuilds every aggregate's snapshot from its events: the fix after a bug
in the domain's Evolve, once the fixed binary is deployed. For each
partition it reads A.T.events and A.T.snapshots (read_committed), folds
each aggregate's events with Evolve from the initial state, and writes a
new snapshot where the latest one differs from the fold:

  version        the number of the aggregate's events
  state          the fold
  commandOffset  kept from the latest snapshot (-1 when there is none)
  recent         kept from the latest snapshot (the dedupe window)

so that what exactly-once rests on (a command at or below commandOffset is
never decided again; a command id in recent gets its reply again) is
unchanged. Each partition's new snapshots are written in one transaction.

Without --yes it is a dry run: it folds and counts the snapshots that
differ, and writes nothing.

Stop every worker first: rebuild --yes refuses while the app's consumer
group (the app's name) has members (a dry run only warns), and checks again
before each partition's transaction; a worker started during a rebuild may
decide commands on a state the rebuild then overwrites. It also refuses when the events topic no
longer starts at offset 0 (retention deleted events: the fold would lose
them), and when an aggregate's latest snapshot counts more or fewer events
than the topic holds (a fix of Evolve never changes that: events are
missing, and a snapshot at a lower version would let the next command
reuse versions). After stopping the workers, wait one transaction timeout:
a killed worker's open transaction is aborted by then.

Workers' local stores need nothing done: the new snapshots are newer
records of the changelog, and a worker restores its partitions from its
store's checkpoint to the end of the changelog when it gets them, before it
decides a command, so it picks them up when it starts.

Progress: a bar when stdout is a terminal, a line per partition otherwise.

Examples:
  decider rebuild snapshots                  # dry run: how many snapshots differ from the fold
  decider rebuild snapshots --brokers k1:9092 --app bank --yes
`

func runRebuild(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("rebuild")
	kafkaOpts := kafkaFlags(fs)
	appName := fs.String("app", "bank", "app name")
	yes := fs.Bool("yes", false, "write the new snapshots (without it, a dry run)")
	txnTimeout := fs.Duration("transaction-timeout", time.Minute, "timeout of each partition's transaction")
	if _, err := parseAction(fs, args, "snapshots"); err != nil {
		return err
	}
	c, err := dial(ctx, kafkaOpts)
	if err != nil {
		return err
	}
	defer c.cl.Close()
	kafka, adm := c.kafka, c.adm
	app, err := discoverApp(ctx, adm, *appName)
	if err != nil {
		return err
	}
	if err := checkNoMembers(ctx, adm, app.Group()); err != nil {
		if *yes {
			return fmt.Errorf("rebuild refused: %w", err)
		}
		fmt.Fprintf(stdout, "warning: %v\n", err)
	}
	rb := &rebuild{kafka: kafka, adm: adm, app: app}
	if *yes {
		if rb.writer, err = kgo.NewClient(append(kafka[:len(kafka):len(kafka)],
			kgo.TransactionalID(app.Name()+"-rebuild"), // a crashed rebuild's open transaction is aborted by the next one
			kgo.TransactionTimeout(*txnTimeout),
			kgo.RecordPartitioner(kgo.ManualPartitioner()),
		)...); err != nil {
			return err
		}
		defer rb.writer.Close()
	}
	for _, agg := range app.Aggregates() {
		if err := rb.aggregate(ctx, agg, stdout); err != nil {
			return err
		}
	}
	return nil
}

// rebuild is one run of decider rebuild snapshots.
type rebuild struct {
	kafka  []kgo.Opt
	adm    *kadm.Client
	app    *topology.App
	writer *kgo.Client // transactional; nil in a dry run
}

// rebuildCounts are what a rebuild did to one partition, or to all.
type rebuildCounts struct {
	events, aggregates, differ, foreign int64
	noSnapshot                          int64 // aggregates with events and no snapshot: commandOffset -1
}

func (c *rebuildCounts) add(o rebuildCounts) {
	c.events += o.events
	c.aggregates += o.aggregates
	c.differ += o.differ
	c.foreign += o.foreign
	c.noSnapshot += o.noSnapshot
}

func (c rebuildCounts) String() string {
	s := fmt.Sprintf("%d events, %d aggregates, %d snapshots differ from the fold", c.events, c.aggregates, c.differ)
	if c.noSnapshot > 0 {
		s += fmt.Sprintf(", %d aggregates had no snapshot (their commandOffset is unknown: -1)", c.noSnapshot)
	}
	if c.foreign > 0 {
		s += fmt.Sprintf(", %d records keyed by aggregates of other partitions ignored (decider verify reports them)", c.foreign)
	}
	return s
}

// aggregate rebuilds the snapshots of one aggregate type, partition by
// partition.
func (rb *rebuild) aggregate(ctx context.Context, agg *topology.Aggregate, stdout io.Writer) error {
	t := rb.app.Topics(agg)
	events, err := listSpans(ctx, rb.adm, t.Events)
	if err != nil {
		return err
	}
	snapshots, err := listSpans(ctx, rb.adm, t.Snapshots)
	if err != nil {
		return err
	}
	var errs []error
	for p := range agg.Partitions() {
		if s := events[p]; s.start > 0 {
			errs = append(errs, fmt.Errorf("%s/%d starts at offset %d: older events were deleted, a fold would lose them", t.Events, p, s.start))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("rebuild refused: %w", err)
	}
	name := rb.app.Name() + "/" + agg.Name()
	bar := newProgress(stdout, "rebuild "+name, int(agg.Partitions()))
	var total rebuildCounts
	for p := range agg.Partitions() {
		spans := map[string]map[int32]span{t.Events: {p: events[p]}, t.Snapshots: {p: snapshots[p]}}
		c, records, err := rb.fold(ctx, agg, t, p, spans, bar)
		if err != nil {
			bar.end()
			return err
		}
		what := "dry run, nothing written"
		if rb.writer != nil {
			what = fmt.Sprintf("%d written", len(records))
			if err := rb.write(ctx, t.Snapshots, p, records); err != nil {
				bar.end()
				return err
			}
		}
		total.add(c)
		bar.step(fmt.Sprintf("%s partition %d: %s (%s)", name, p, c, what))
	}
	bar.end()
	fmt.Fprintf(stdout, "rebuild %s: %d partitions, %s\n", name, agg.Partitions(), total)
	if rb.writer == nil && total.differ > 0 {
		fmt.Fprintf(stdout, "dry run: nothing written; run again with --yes to write them\n")
	}
	return nil
}

// folded is one aggregate of a partition being rebuilt.
type folded struct {
	state  any
	events int64
	last   *schemas.Snapshot // the latest snapshot; nil: none, or a tombstone
	value  []byte            // its record value
}

// fold reads partition p of the events and snapshots topics and returns
// the snapshot records that differ from the fold of the events.
func (rb *rebuild) fold(ctx context.Context, agg *topology.Aggregate, t topology.Topics, p int32, spans map[string]map[int32]span, bar *progress) (rebuildCounts, []*kgo.Record, error) {
	var c rebuildCounts
	aggs := map[string]*folded{}
	get := func(key []byte) *folded {
		a := aggs[string(key)]
		if a == nil {
			a = &folded{state: agg.Initial()}
			aggs[string(key)] = a
		}
		return a
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var ferr error
	fail := func(err error) {
		if ferr == nil {
			ferr = err
			cancel()
		}
	}
	reg := agg.Schemas()
	var read int64
	stalled, err := readSpans(ctx, rb.kafka, spans, 10*time.Second, func(r *kgo.Record) {
		if ferr != nil {
			return
		}
		if read++; read%(1<<16) == 0 {
			bar.detail(fmt.Sprintf("partition %d: %d records read", p, read))
		}
		if topology.Partition(r.Key, agg.Partitions()) != p {
			c.foreign++
			return
		}
		a := get(r.Key)
		if r.Topic == t.Snapshots {
			a.last, a.value = nil, nil
			if r.Value == nil {
				return
			}
			d, err := reg.Decode(schemas.SnapshotName, r.Value)
			if err != nil {
				fail(fmt.Errorf("snapshot of %q at %s/%d@%d (its commandOffset and dedupe window are needed): %w", r.Key, r.Topic, p, r.Offset, err))
				return
			}
			s := d.(schemas.Snapshot)
			a.last, a.value = &s, slices.Clone(r.Value)
			return
		}
		c.events++
		a.events++
		var typ string
		for _, h := range r.Headers {
			if h.Key == schemas.HeaderType {
				typ = string(h.Value)
			}
		}
		ev, err := agg.DecodeEvent(typ, r.Value)
		if err == nil {
			a.state, err = evolve(agg, a.state, ev)
		}
		if err != nil {
			fail(fmt.Errorf("event of %q at %s/%d@%d: %w", r.Key, r.Topic, p, r.Offset, err))
		}
	})
	switch {
	case ferr != nil:
		return c, nil, fmt.Errorf("rebuild refused: %w", ferr)
	case err != nil:
		return c, nil, err
	case len(stalled) > 0:
		return c, nil, fmt.Errorf("rebuild refused: partition %d of %s or %s could not be read to its end (an open transaction?)", p, t.Events, t.Snapshots)
	}
	var records []*kgo.Record
	for _, id := range slices.Sorted(maps.Keys(aggs)) {
		a := aggs[id]
		if a.events == 0 && a.last == nil {
			continue // deleted, and no events to rebuild it from
		}
		c.aggregates++
		state, err := agg.EncodeState(a.state)
		if err != nil {
			return c, nil, fmt.Errorf("encode the state of %q: %w", id, err)
		}
		s := schemas.Snapshot{AggregateID: id, Version: a.events, CommandOffset: -1, State: state}
		if a.last != nil {
			if a.last.Version != a.events {
				// A fix of Evolve never changes how many events there
				// are: events are missing (a recreated or compacted
				// topic, retention), and writing this snapshot would let
				// the next command reuse versions.
				return c, nil, fmt.Errorf("rebuild refused: %s has %d events in %s/%d but its snapshot is at version %d", id, a.events, t.Events, p, a.last.Version)
			}
			s.CommandOffset, s.Recent = a.last.CommandOffset, a.last.Recent
		} else {
			c.noSnapshot++
		}
		_, v, err := reg.Encode(s)
		if err != nil {
			return c, nil, fmt.Errorf("encode the snapshot of %q: %w", id, err)
		}
		if !bytes.Equal(v, a.value) {
			c.differ++
			records = append(records, &kgo.Record{Topic: t.Snapshots, Partition: p, Key: []byte(id), Value: v})
		}
	}
	return c, records, nil
}

// write writes records to partition p of the snapshots topic in one
// transaction, once the group still has no members.
func (rb *rebuild) write(ctx context.Context, topic string, p int32, records []*kgo.Record) error {
	if len(records) == 0 {
		return nil
	}
	if err := checkNoMembers(ctx, rb.adm, rb.app.Group()); err != nil {
		return fmt.Errorf("rebuild stopped before %s/%d: %w", topic, p, err)
	}
	fail := func(err error) error {
		return fmt.Errorf("write snapshots to %s/%d: %w", topic, p, err)
	}
	if err := rb.writer.BeginTransaction(); err != nil {
		return fail(err)
	}
	err := rb.writer.ProduceSync(ctx, records...).FirstErr()
	commit := kgo.TryCommit
	if err != nil {
		commit = kgo.TryAbort
	}
	if eerr := rb.writer.EndTransaction(ctx, commit); eerr != nil {
		err = errors.Join(err, eerr)
	}
	if err != nil {
		return fail(err)
	}
	return nil
}
