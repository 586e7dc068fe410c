package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"time"

	"github.com/deciderhq/decider/examples/accounts"
	"github.com/deciderhq/decider/schemas"
	"github.com/deciderhq/decider/topology"
	"github.com/twmb/franz-go/pkg/kgo"
)

const tailUsage = `Prints the records of one topic of an app's aggregate type, read_committed
(only committed transactions), one JSON object per line:

  {"topic":…,"partition":…,"offset":…,"timestamp":…,"key":…,
   "headers":{"ce_type":…,…},"value":…}

The value is decoded to Avro JSON: an event, command or dead letter by its
ce_type header, a reply as decider.Reply, a snapshot as decider.Snapshot
with its state decoded too. A value that does not decode is printed in
base64, with "error" saying why; a tombstone's value is null.

--id keeps the records of one aggregate: for commands, events and
snapshots only its partition is read, and the records keyed by it; for dlq
every partition, the records keyed by it; for replies (keyed by command id)
every partition, the replies whose aggregateId is it.

Without --follow, tail stops at the end offsets it found when it started;
with it, it prints new records as they are committed until interrupted.

Examples:
  decider tail events --id acc-1
  decider tail replies --from end --follow
  decider tail dlq --brokers k1:9092 --app bank | jq 'select(.headers.decider_dlq_reason == "handler_panic")'
  decider tail snapshots --aggregate account --from 1200
`

func runTail(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("tail")
	kafkaOpts := kafkaFlags(fs)
	appName := fs.String("app", "bank", "app name")
	aggregate := fs.String("aggregate", accounts.Name, "aggregate type")
	id := fs.String("id", "", "only the records of this aggregate id")
	from := fs.String("from", "beginning", "where each partition is read from: beginning, end, or an offset")
	follow := fs.Bool("follow", false, "go on printing new records until interrupted")
	kind, err := parseAction(fs, args, "events", "replies", "dlq", "commands", "snapshots")
	if err != nil {
		return err
	}
	c, app, agg, err := dialAggregate(ctx, kafkaOpts, *appName, *aggregate)
	if err != nil {
		return err
	}
	defer c.cl.Close()
	kafka, adm := c.kafka, c.adm
	t := app.Topics(agg)
	topic := map[string]string{"events": t.Events, "replies": t.Replies, "dlq": t.DLQ, "commands": t.Commands, "snapshots": t.Snapshots}[kind]
	spans, err := listSpans(ctx, adm, topic)
	if err != nil {
		return err
	}
	if err := startSpans(spans, *from, *follow); err != nil {
		return err
	}
	keyed := kind != "replies"
	if *id != "" && (kind == "commands" || kind == "events" || kind == "snapshots") {
		p := topology.Partition([]byte(*id), agg.Partitions())
		spans = map[int32]span{p: spans[p]}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	enc := json.NewEncoder(stdout)
	var werr error
	stalled, err := readSpans(ctx, kafka, map[string]map[int32]span{topic: spans}, tailIdle(*follow), func(r *kgo.Record) {
		if werr != nil {
			return
		}
		line := tailLine(agg, kind, r)
		if *id != "" && ((keyed && string(r.Key) != *id) || (!keyed && line.aggregateID != *id)) {
			return
		}
		if werr = enc.Encode(line); werr != nil {
			cancel() // stdout is gone (a closed pipe): stop reading
		}
	})
	switch {
	case werr != nil:
		return fmt.Errorf("write: %w", werr)
	case *follow && ctx.Err() != nil:
		return nil // interrupted: how --follow ends
	case err != nil:
		return err
	}
	for tp, end := range stalled {
		fmt.Fprintf(os.Stderr, "decider tail: %s/%d: nothing more read before end offset %d (an open transaction?)\n", tp.topic, tp.partition, end)
	}
	return nil
}

// tailIdle is how long tail waits for a record: forever when it follows.
func tailIdle(follow bool) time.Duration {
	if follow {
		return 0
	}
	return 10 * time.Second
}

// startSpans moves the start of every span to where --from says, and the
// end out of reach when following.
func startSpans(spans map[int32]span, from string, follow bool) error {
	at := int64(-1)
	if from != "beginning" && from != "end" {
		o, err := strconv.ParseInt(from, 10, 64)
		if err != nil || o < 0 {
			return fmt.Errorf("--from %q: want beginning, end or an offset", from)
		}
		at = o
	}
	for p, s := range spans {
		switch {
		case from == "end":
			s.start = s.end
		case at >= 0:
			s.start = min(max(at, s.start), s.end)
		}
		if follow {
			s.end = math.MaxInt64
		}
		spans[p] = s
	}
	return nil
}

// tailRecord is one line of tail.
type tailRecord struct {
	Topic     string            `json:"topic"`
	Partition int32             `json:"partition"`
	Offset    int64             `json:"offset"`
	Timestamp time.Time         `json:"timestamp"`
	Key       string            `json:"key"`
	Headers   map[string]string `json:"headers"`
	Value     json.RawMessage   `json:"value"`
	Error     string            `json:"error,omitempty"` // why the value is base64, not decoded

	aggregateID string // of a reply
}

// tailLine decodes record r of a topic of kind (events, replies, …).
func tailLine(agg *topology.Aggregate, kind string, r *kgo.Record) tailRecord {
	line := tailRecord{
		Topic: r.Topic, Partition: r.Partition, Offset: r.Offset, Timestamp: r.Timestamp,
		Key: string(r.Key), Headers: map[string]string{}, Value: json.RawMessage("null"),
	}
	for _, h := range r.Headers {
		line.Headers[h.Key] = string(h.Value)
	}
	if r.Value == nil {
		return line
	}
	reg := agg.Schemas()
	var value []byte
	var err error
	switch kind {
	case "snapshots":
		var v snapshotView
		if v, err = viewSnapshot(agg, r.Value); err == nil {
			value, err = json.Marshal(v)
		}
	case "replies":
		if value, err = reg.DecodeJSON(schemas.ReplyName, r.Value); err == nil {
			var rep schemas.Reply
			err = json.Unmarshal(value, &rep)
			line.aggregateID = rep.AggregateID
		}
	default:
		value, err = reg.DecodeJSON(line.Headers[schemas.HeaderType], r.Value)
	}
	if err != nil {
		value, _ = json.Marshal(base64.StdEncoding.EncodeToString(r.Value))
		line.Error = err.Error()
	}
	line.Value = value
	return line
}

// snapshotView is a decider.Snapshot as the operator commands print it,
// its state decoded to Avro JSON.
type snapshotView struct {
	AggregateID   string          `json:"aggregateId"`
	Version       int64           `json:"version"`
	CommandOffset int64           `json:"commandOffset"`
	State         json.RawMessage `json:"state"`
	Recent        []schemas.Reply `json:"recent"` // the dedupe window, newest last
}

// viewSnapshot decodes a snapshot record's value.
func viewSnapshot(agg *topology.Aggregate, value []byte) (snapshotView, error) {
	reg := agg.Schemas()
	d, err := reg.Decode(schemas.SnapshotName, value)
	if err != nil {
		return snapshotView{}, err
	}
	s := d.(schemas.Snapshot)
	state, err := reg.DecodeJSON(agg.StateName(), s.State)
	if err != nil {
		return snapshotView{}, fmt.Errorf("state: %w", err)
	}
	v := snapshotView{AggregateID: s.AggregateID, Version: s.Version, CommandOffset: s.CommandOffset, State: state, Recent: s.Recent}
	if v.Recent == nil {
		v.Recent = []schemas.Reply{}
	}
	return v, nil
}
