package processor

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/deciderhq/decider/examples/accounts"
	"github.com/deciderhq/decider/schemas"
	"github.com/deciderhq/decider/statestore"
	"github.com/deciderhq/decider/topology"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// env is a real broker (kfake, in process) with the bank app's topics.
type env struct {
	t       testing.TB
	cluster *kfake.Cluster
	kafka   []kgo.Opt
	app     *topology.App
	agg     *topology.Aggregate
	topics  topology.Topics
	cl      *kgo.Client // plain producer/reader for the test itself
}

func newEnv(t testing.TB, partitions int32) *env {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.GroupMinSessionTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	app, err := accounts.App(partitions)
	if err != nil {
		t.Fatal(err)
	}
	agg, _ := app.Aggregate(accounts.Name)
	e := &env{t: t, cluster: c, kafka: []kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...)}, app: app, agg: agg, topics: app.Topics(agg)}
	admin, err := kgo.NewClient(e.kafka...)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close() // its metadata cache predates the topics
	if err := topology.EnsureTopics(context.Background(), kadm.NewClient(admin), app, topology.TopicOptions{}); err != nil {
		t.Fatal(err)
	}
	e.cl, err = kgo.NewClient(append(e.kafka, kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.FetchIsolationLevel(kgo.ReadCommitted()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.cl.Close)
	return e
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("DECIDER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// running is a worker running in a goroutine.
type running struct {
	w      *Worker
	store  *statestore.Store
	cancel context.CancelFunc
	done   chan error
}

// waitIDFilters waits until the worker owns n partitions and the id filter
// of each answers.
func (r *running) waitIDFilters(t testing.TB, n int) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		r.w.mu.Lock()
		complete := 0
		for _, a := range r.w.parts {
			if a.ids.complete.Load() {
				complete++
			}
		}
		owned := len(r.w.parts)
		r.w.mu.Unlock()
		if owned == n && complete == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d partitions' id filters complete after a minute (%d owned)", complete, n, owned)
		}
		time.Sleep(5 * time.Millisecond) // the filters are filled in the background: nothing to wait on
	}
}

// start runs a worker with its state in dir.
func (e *env) start(dir, instance string, configure ...func(*Config)) *running {
	e.t.Helper()
	store, err := statestore.Open(dir, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	kafka := e.kafka
	if os.Getenv("DECIDER_TEST_LOG") == "kgo" {
		kafka = append(kafka, kgo.WithLogger(kgo.BasicLogger(os.Stderr, kgo.LogLevelDebug, nil)))
	}
	cfg := Config{App: e.app, Store: store, Kafka: kafka, InstanceID: instance, Logger: testLogger(e.t), SessionTimeout: time.Second, TransactionTimeout: 2 * time.Second}
	for _, f := range configure {
		f(&cfg)
	}
	w, err := New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{w: w, store: store, cancel: cancel, done: make(chan error, 1)}
	go func() {
		err := w.Run(ctx)
		if err != nil && ctx.Err() == nil {
			e.t.Errorf("worker %s stopped by itself: %v", instance, err)
		}
		r.done <- err
	}()
	e.t.Cleanup(func() { r.stop() })
	return r
}

// stop cancels the worker, waits for it and closes its store; it returns
// Run's error. Stopping twice is harmless.
func (r *running) stop() error {
	if r.cancel == nil {
		return nil
	}
	r.cancel()
	r.cancel = nil
	err := <-r.done
	r.store.Close()
	return err
}

// command builds a command record for aggregate id, replying to the default
// replies topic.
func (e *env) command(id, cmdID string, cmd any) *kgo.Record {
	e.t.Helper()
	typ, payload, err := e.agg.Schemas().Encode(cmd)
	if err != nil {
		e.t.Fatal(err)
	}
	h := func(k, v string) kgo.RecordHeader { return kgo.RecordHeader{Key: k, Value: []byte(v)} }
	return &kgo.Record{
		Topic: e.topics.Commands, Partition: topology.Partition([]byte(id), e.agg.Partitions()),
		Key: []byte(id), Value: payload,
		Headers: []kgo.RecordHeader{
			h(schemas.HeaderSpecVersion, "1.0"), h(schemas.HeaderID, cmdID), h(schemas.HeaderType, typ),
			h(schemas.HeaderSource, "test"), h(schemas.HeaderReplyTo, e.topics.Replies),
		},
	}
}

func (e *env) produce(rs ...*kgo.Record) {
	e.t.Helper()
	if err := e.cl.ProduceSync(context.Background(), rs...).FirstErr(); err != nil {
		e.t.Fatal(err)
	}
}

// readAll reads the committed records of topic up to its last stable
// offset now (a transaction still open is not waited for).
func (e *env) readAll(topic string) []*kgo.Record {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ends, err := kadm.NewClient(e.cl).ListCommittedOffsets(ctx, topic)
	if err != nil {
		e.t.Fatal(err)
	}
	offsets := map[int32]kgo.Offset{}
	pending := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		offsets[o.Partition] = kgo.NewOffset().AtStart()
		if o.Offset > 0 {
			pending[o.Partition] = o.Offset
		}
	})
	cl, err := kgo.NewClient(append(e.kafka, kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: offsets}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.KeepControlRecords())...)
	if err != nil {
		e.t.Fatal(err)
	}
	defer cl.Close()
	var out []*kgo.Record
	// The record just below the last stable offset is a transaction marker
	// or a committed record, both seen here; only an aborted record whose
	// marker follows another producer's open transaction is not, and then
	// the deadline ends the read with what is committed.
	for len(pending) > 0 {
		f := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			break
		}
		f.EachRecord(func(r *kgo.Record) {
			if end, ok := pending[r.Partition]; ok && r.Offset+1 >= end {
				delete(pending, r.Partition)
			}
			if end, ok := ends.Lookup(topic, r.Partition); !r.Attrs.IsControl() && ok && r.Offset < end.Offset {
				out = append(out, r)
			}
		})
	}
	return out
}

// waitReplies reads the replies topic until it holds n replies, and returns
// them by command id. It fails on a command id answered twice.
func (e *env) waitReplies(n int) map[string]schemas.Reply {
	e.t.Helper()
	out := map[string]schemas.Reply{}
	for _, rep := range e.waitRepliesRaw(n) {
		if _, dup := out[rep.CommandID]; dup {
			e.t.Fatalf("command %s answered twice", rep.CommandID)
		}
		out[rep.CommandID] = rep
	}
	return out
}

// waitRepliesRaw reads the replies topic until it holds at least n replies
// and returns them all, in no particular order.
func (e *env) waitRepliesRaw(n int) []schemas.Reply {
	e.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		var out []schemas.Reply
		for _, r := range e.readAll(e.topics.Replies) {
			v, err := e.agg.Schemas().Decode(schemas.ReplyName, r.Value)
			if err != nil {
				e.t.Fatal(err)
			}
			out = append(out, v.(schemas.Reply))
		}
		if len(out) >= n {
			return out
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%d replies after 60s, want %d", len(out), n)
		}
		time.Sleep(50 * time.Millisecond) // polling a topic: there is no condition to wait on
	}
}

func header(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// checkEvents checks that every aggregate's events carry versions 1..n in
// offset order, in the partition its id hashes to, and returns the events
// by aggregate.
func (e *env) checkEvents() map[string][]any {
	e.t.Helper()
	out := map[string][]any{}
	for _, r := range e.readAll(e.topics.Events) {
		id := string(r.Key)
		if want := topology.Partition(r.Key, e.agg.Partitions()); r.Partition != want {
			e.t.Fatalf("event of %s in partition %d, want %d", id, r.Partition, want)
		}
		v, err := strconv.Atoi(header(r, schemas.HeaderAggregateVersion))
		if err != nil || v != len(out[id])+1 {
			e.t.Fatalf("event of %s has version %q, want %d", id, header(r, schemas.HeaderAggregateVersion), len(out[id])+1)
		}
		ev, err := e.agg.DecodeEvent(header(r, schemas.HeaderType), r.Value)
		if err != nil {
			e.t.Fatal(err)
		}
		out[id] = append(out[id], ev)
	}
	return out
}

func errIsNil(t *testing.T, err error) {
	t.Helper()
	if err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}

// offlineWorker returns a worker of the bank app (4 partitions) with its
// store in a temp dir, not running, for tests of its parts; configure, if
// not nil, adjusts its config first.
func offlineWorker(t *testing.T, configure func(*Config)) (*Worker, *topology.Aggregate) {
	t.Helper()
	app, err := accounts.App(4)
	if err != nil {
		t.Fatal(err)
	}
	store, err := statestore.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	cfg := Config{App: app, Store: store, InstanceID: "t"}
	if configure != nil {
		configure(&cfg)
	}
	w, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	agg, _ := app.Aggregate(accounts.Name)
	return w, agg
}
