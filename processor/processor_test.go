package processor

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/deciderhq/decider/examples/accounts"
	"github.com/deciderhq/decider/schemas"
	"github.com/deciderhq/decider/statestore"
	"github.com/deciderhq/decider/topology"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// step is one command of a script and what the reference model says of it.
type step struct {
	id, cmdID string
	cmd       accounts.Command
}

// model is the reference: the example domain run in memory, in order.
type model struct {
	state  map[string]accounts.Account
	ver    map[string]int64
	events map[string][]any
}

func newModel() *model {
	return &model{state: map[string]accounts.Account{}, ver: map[string]int64{}, events: map[string][]any{}}
}

// apply returns the reply the worker must give to s.
func (m *model) apply(s step) schemas.Reply {
	rep := schemas.Reply{CommandID: s.cmdID, AggregateID: s.id, Status: schemas.Accepted}
	evs, err := accounts.Decide(m.state[s.id], s.cmd)
	var rej topology.Rejection
	if errors.As(err, &rej) {
		rep.Status, rep.Reason, rep.Version = schemas.Rejected, string(rej), m.ver[s.id]
		return rep
	}
	for _, e := range evs {
		m.state[s.id] = accounts.Evolve(m.state[s.id], e)
		m.events[s.id] = append(m.events[s.id], e)
	}
	m.ver[s.id] += int64(len(evs))
	rep.Version, rep.Events = m.ver[s.id], int32(len(evs))
	return rep
}

// script returns n commands over k accounts: opens, deposits, withdrawals
// (some too large), closes, and commands to accounts never opened.
func script(prefix string, n, k int) []step {
	var out []step
	for i := range n {
		id := fmt.Sprintf("acc-%d", i%k)
		var c accounts.Command
		switch r := (i / k) % 6; {
		case i < k:
			c = accounts.OpenAccount{Owner: "owner-" + id}
		case r == 1 || r == 3:
			c = accounts.Deposit{Amount: int64(10 + i%7)}
		case r == 2 || r == 4:
			c = accounts.Withdraw{Amount: int64(5 + i%13)}
		case r == 5 && i%11 == 0:
			c = accounts.CloseAccount{}
		default:
			c = accounts.Deposit{Amount: 0} // invalid_amount
		}
		out = append(out, step{id: id, cmdID: fmt.Sprintf("%s-%d", prefix, i), cmd: c})
	}
	out = append(out, step{id: "never-opened", cmdID: prefix + "-x", cmd: accounts.Withdraw{Amount: 1}})
	return out
}

// run sends steps as raw records, all at once, so that a poll holds several
// commands of one aggregate, and returns the replies the model expects.
func (e *env) run(m *model, steps []step) map[string]schemas.Reply {
	want := map[string]schemas.Reply{}
	for _, s := range steps {
		e.produce(e.command(s.id, s.cmdID, s.cmd))
		want[s.cmdID] = m.apply(s)
	}
	return want
}

func (e *env) check(m *model, want map[string]schemas.Reply, total int) {
	e.t.Helper()
	got := e.waitReplies(total)
	for id, w := range want {
		if g := got[id]; g != w {
			e.t.Errorf("reply to %s = %+v, want %+v", id, g, w)
		}
	}
	events := e.checkEvents()
	for id, w := range m.events {
		if !reflect.DeepEqual(events[id], w) {
			e.t.Errorf("events of %s = %v, want %v", id, events[id], w)
		}
	}
	if len(events) != len(m.events) {
		e.t.Errorf("events for %d aggregates, want %d", len(events), len(m.events))
	}
}

// eachPollSize runs test with the default MaxPollRecords, under which a
// test's worker is never behind by a full poll and decides each batch after
// the one before has committed, and with polls of one command, with which
// it is behind whenever two commands wait, and decides each batch while the
// one before commits.
func eachPollSize(t *testing.T, test func(t *testing.T, polls func(*Config))) {
	for _, tc := range []struct {
		name string
		max  int
	}{{"default polls", 0}, {"polls of one", 1}} {
		t.Run(tc.name, func(t *testing.T) {
			test(t, func(c *Config) { c.MaxPollRecords = tc.max })
		})
	}
}

func TestCommandsToRepliesEventsAndSnapshots(t *testing.T) {
	eachPollSize(t, testCommandsToRepliesEventsAndSnapshots)
}

func testCommandsToRepliesEventsAndSnapshots(t *testing.T, polls func(*Config)) {
	e := newEnv(t, 4)
	m := newModel()
	steps := script("a", 300, 20)
	want := e.run(m, steps)
	w := e.start(t.TempDir(), "w1", polls)
	e.check(m, want, len(steps))

	// Every snapshot record decodes, and the latest one per aggregate is the
	// fold of its events.
	latest := map[string]*aggState{}
	for _, r := range e.readAll(e.topics.Snapshots) {
		st, err := decodeSnapshot(e.agg, r.Value, false)
		if err != nil {
			t.Fatal(err)
		}
		latest[string(r.Key)] = st
	}
	for id, st := range latest {
		if st.state != m.state[id] || st.version != m.ver[id] {
			t.Errorf("snapshot of %s = %+v v%d, want %+v v%d", id, st.state, st.version, m.state[id], m.ver[id])
		}
	}
	if st, ok := latest["never-opened"]; !ok || st.version != 0 || st.recent.len() != 1 {
		t.Errorf("a rejected command on an aggregate with no events must leave a snapshot at version 0 remembering its reply, got %+v", st)
	}
	errIsNil(t, w.stop())
}

// A worker restarted on its data dir continues from Pebble; one started on
// an empty dir restores everything from the snapshots topic; both give the
// results an uninterrupted worker would, also once their id filters answer
// (the aggregates of the first run are in them).
func TestRestartFromPebbleAndFromChangelog(t *testing.T) {
	e := newEnv(t, 4)
	m := newModel()
	dir := t.TempDir()
	total := 0

	w := e.start(dir, "w1")
	s1 := script("one", 120, 15)
	want := e.run(m, s1)
	total += len(s1)
	e.check(m, want, total)
	errIsNil(t, w.stop())

	w = e.start(dir, "w1")
	w.waitIDFilters(t, int(e.agg.Partitions()))
	s2 := script("two", 120, 15)[15:] // no second open
	want = e.run(m, s2)
	total += len(s2)
	e.check(m, want, total)
	errIsNil(t, w.stop())

	empty := t.TempDir()
	w = e.start(empty, "w2")
	w.waitIDFilters(t, int(e.agg.Partitions()))
	s3 := script("three", 150, 15)[15:]
	want = e.run(m, s3)
	total += len(s3)
	e.check(m, want, total)
	n := 0
	for p := range e.agg.Partitions() {
		c, err := w.store.Count(e.agg.Name(), p)
		if err != nil {
			t.Fatal(err)
		}
		n += c
	}
	if n != 16 {
		t.Fatalf("the restored store holds %d aggregates, want 15 accounts and never-opened", n)
	}
	errIsNil(t, w.stop())
}

// With no state cache, every lookup of an aggregate a batch before wrote
// goes through the id filter to Pebble: the filter holds what the worker
// wrote, so that no aggregate opened in one batch is new again in the next.
func TestIDFilterHoldsWhatWasWritten(t *testing.T) {
	e := newEnv(t, 4)
	m := newModel()
	w := e.start(t.TempDir(), "w1", func(c *Config) { c.StateCacheBytes = -1 })
	w.waitIDFilters(t, int(e.agg.Partitions()))
	steps := script("s", 60, 15)
	total := 0
	for _, part := range [][]step{steps[:15], steps[15:]} { // the opens, then what follows
		want := e.run(m, part)
		total += len(part)
		e.check(m, want, total)
	}
	errIsNil(t, w.stop())
}

// A transaction that fails leaves no trace (no reply, no event, Pebble
// unchanged), and its commands are processed once when the fault clears.
func TestFailedTransactionLeavesNoTrace(t *testing.T) {
	eachPollSize(t, testFailedTransactionLeavesNoTrace)
}

func testFailedTransactionLeavesNoTrace(t *testing.T, polls func(*Config)) {
	for _, tc := range []struct {
		name  string
		fault kfake.Fault
	}{
		{"produce error", kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "bank.account.events", Err: kerr.InvalidRecord, Count: -1}},
		{"TxnOffsetCommit error", kfake.Fault{Keys: []kmsg.Key{kmsg.TxnOffsetCommit}, Err: kerr.IllegalGeneration, Count: -1}},
		{"EndTxn error", kfake.Fault{Keys: []kmsg.Key{kmsg.EndTxn}, Err: kerr.CoordinatorNotAvailable, Count: -1}},
		{"EndTxn timeout", kfake.Fault{Keys: []kmsg.Key{kmsg.EndTxn}, Err: kerr.RequestTimedOut, Count: -1}},
		// Fenced (as after a transaction timeout while paused): the worker
		// rejoins with a new producer instead of exiting.
		{"EndTxn fenced", kfake.Fault{Keys: []kmsg.Key{kmsg.EndTxn}, Err: kerr.ProducerFenced, Count: -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, 2)
			m := newModel()
			w := e.start(t.TempDir(), "w1", polls)
			open := []step{{id: "acc", cmdID: "open", cmd: accounts.OpenAccount{Owner: "ada"}}}
			e.check(m, e.run(m, open), 1)
			p := topology.Partition([]byte("acc"), e.agg.Partitions())
			before, err := w.store.Get(e.agg.Name(), p, "acc")
			if err != nil {
				t.Fatal(err)
			}

			h := e.cluster.Fault(tc.fault)
			var steps []step
			for i := range 3 {
				steps = append(steps, step{id: "acc", cmdID: fmt.Sprint("dep", i), cmd: accounts.Deposit{Amount: 5}})
			}
			// Two wait while the transaction fails: with polls of one, the
			// second is decided while the first one's transaction ends,
			// on its state, and is dropped with it.
			want := e.run(m, steps[:2])
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := h.Wait(ctx, 3); err != nil { // tried, aborted and redone, more than once
				t.Fatal(err)
			}
			if n := len(e.readAll(e.topics.Replies)); n != 1 {
				t.Fatalf("%d replies committed while the transaction fails, want the first one only", n)
			}
			if n := len(e.readAll(e.topics.Events)); n != 1 {
				t.Fatalf("%d events committed while the transaction fails, want 1", n)
			}
			after, err := w.store.Get(e.agg.Name(), p, "acc")
			if err != nil || string(after) != string(before) {
				t.Fatalf("Pebble changed by a failed transaction (err %v)", err)
			}
			// More commands for the same aggregate queue up behind it.
			maps.Copy(want, e.run(m, steps[2:]))
			h.Remove()
			e.check(m, want, 1+len(steps))
			errIsNil(t, w.stop())
		})
	}
}

// A worker behind by a full poll decides each batch while the transaction
// of the one before ends. When that transaction does not commit, the batch
// decided beside it, on its state, is dropped, and both are redone in
// order from the first one's commands. The session itself puts its position
// back to the offsets it last committed, which already include the polls
// made before that commit: without the worker's own rewind, the command
// decided beside the successful commit would be skipped.
func TestBatchDecidedBesideAFailedCommit(t *testing.T) {
	e := newEnv(t, 2)
	m := newModel()
	w := e.start(t.TempDir(), "w1", func(c *Config) { c.MaxPollRecords = 1 })
	e.check(m, e.run(m, []step{{id: "acc", cmdID: "open", cmd: accounts.OpenAccount{Owner: "ada"}}}), 1)

	// Offsets: the open 0, the deposits 1 to 4. The commit of the batch of
	// the second deposit fails, once; the batch of the third one is being
	// decided beside it.
	h := e.failCommitAt(3)
	defer h.Remove()
	want := map[string]schemas.Reply{}
	var records []*kgo.Record
	for i := range 4 { // in one produce, so that the worker polls them one by one, behind
		s := step{id: "acc", cmdID: fmt.Sprint("dep", i), cmd: accounts.Deposit{Amount: 5}}
		records = append(records, e.command(s.id, s.cmdID, s.cmd))
		want[s.cmdID] = m.apply(s)
	}
	e.produce(records...)
	e.check(m, want, 5)
	if n := h.Hits(); n != 1 {
		t.Fatalf("the fault hit %d commits, want 1", n)
	}
	errIsNil(t, w.stop())
}

// Commands polled while a transaction's records are flushed, too few to be
// decided beside it, wait for its end and join the next batch; when that
// end does not commit, they are dropped with it and polled again after its
// commands, in order.
func TestCommandsGatheredBesideAFailedCommit(t *testing.T) {
	e := newEnv(t, 1)
	m := newModel()
	w := e.start(t.TempDir(), "w1")
	e.check(m, e.run(m, []step{{id: "acc", cmdID: "open", cmd: accounts.OpenAccount{Owner: "ada"}}}), 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	topics, err := kadm.NewClient(e.cl).ListTopics(ctx, e.topics.Commands)
	errIsNil(t, err)
	commandsID := topics[e.topics.Commands].ID

	// The transaction of the first deposit (offset 1) is held in its
	// produce until the worker fetches from offset 5: it polled the other
	// three deposits meanwhile. Then its offset commit fails.
	holding, gathered := make(chan struct{}), make(chan struct{})
	var held, fetched atomic.Bool
	e.cluster.ControlKey(int16(kmsg.Fetch), func(r kmsg.Request) (kmsg.Response, error, bool) {
		for _, t := range r.(*kmsg.FetchRequest).Topics {
			for _, p := range t.Partitions {
				if (t.Topic == e.topics.Commands || t.TopicID == commandsID) && p.FetchOffset >= 5 && fetched.CompareAndSwap(false, true) {
					close(gathered)
				}
			}
		}
		return nil, nil, false
	})
	e.cluster.ControlKey(int16(kmsg.Produce), func(r kmsg.Request) (kmsg.Response, error, bool) {
		if r.(*kmsg.ProduceRequest).TransactionID != nil && held.CompareAndSwap(false, true) {
			close(holding)
			e.cluster.SleepControl(func() { <-gathered })
		}
		return nil, nil, false
	})
	fail := e.failCommitAt(2)
	defer fail.Remove()
	want := map[string]schemas.Reply{}
	deposit := func(i int) *kgo.Record {
		s := step{id: "acc", cmdID: fmt.Sprint("dep", i), cmd: accounts.Deposit{Amount: int64(i + 1)}}
		want[s.cmdID] = m.apply(s)
		return e.command(s.id, s.cmdID, s.cmd)
	}
	e.produce(deposit(0))
	<-holding
	e.produce(deposit(1), deposit(2), deposit(3))
	e.check(m, want, 5)
	if n := fail.Hits(); n != 1 {
		t.Fatalf("the fault hit %d commits, want 1", n)
	}
	errIsNil(t, w.stop())
}

// failCommitAt fails, once, the offset commit of the transaction whose
// commands end before offset next.
func (e *env) failCommitAt(next int64) *kfake.FaultHandle {
	return e.cluster.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.TxnOffsetCommit}, Err: kerr.IllegalGeneration,
		When: func(r kmsg.Request) bool {
			for _, t := range r.(*kmsg.TxnOffsetCommitRequest).Topics {
				for _, p := range t.Partitions {
					if p.Offset == next {
						return true
					}
				}
			}
			return false
		}})
}

// A poll of many commands of one partition is decided in shares, in
// parallel: the replies and each aggregate's events are those of the
// commands decided one by one, in order.
func TestOnePartitionDecidedInShares(t *testing.T) {
	e := newEnv(t, 1)
	m := newModel()
	steps := script("s", 3000, 101)
	want := e.run(m, steps) // before the worker starts: its first polls hold thousands
	w := e.start(t.TempDir(), "w1")
	e.check(m, want, len(steps))
	errIsNil(t, w.stop())
}

// A batch decided in an assignment of a partition that was revoked since,
// or revoked and assigned again, is not owned: settle drops it.
func TestBatchOwned(t *testing.T) {
	a := &assigned{key: partitionKey{"bank.account.commands", 3}}
	w := &Worker{parts: map[partitionKey]*assigned{a.key: a}}
	b := &batch{w: w, parts: []*partBatch{{a: a}, {a: a}}}
	if !b.owned() {
		t.Error("a batch of the current assignment is not owned")
	}
	w.parts[a.key] = &assigned{key: a.key}
	if b.owned() {
		t.Error("a batch of an assignment since replaced is owned")
	}
	delete(w.parts, a.key)
	if b.owned() {
		t.Error("a batch of a revoked partition is owned")
	}
}

// mergeFetches gives each partition one entry, its records in the order
// polled, keeps the errors of a fetch without the watermarks it does not
// carry, and leaves out the error of a poll cut short.
func TestMergeFetches(t *testing.T) {
	rec := func(p int32, o int64) *kgo.Record { return &kgo.Record{Topic: "c", Partition: p, Offset: o} }
	fetch := func(parts ...kgo.FetchPartition) kgo.Fetches {
		return kgo.Fetches{{Topics: []kgo.FetchTopic{{Topic: "c", Partitions: parts}}}}
	}
	a := fetch(kgo.FetchPartition{Partition: 0, Records: []*kgo.Record{rec(0, 1), rec(0, 2)}}, kgo.FetchPartition{Partition: 1, HighWatermark: 8, Records: []*kgo.Record{rec(1, 7)}})
	b := append(fetch(kgo.FetchPartition{Partition: 0, Records: []*kgo.Record{rec(0, 3)}}, kgo.FetchPartition{Partition: 2, Records: []*kgo.Record{rec(2, 4)}},
		kgo.FetchPartition{Partition: 1, HighWatermark: -1, Err: kerr.NotLeaderForPartition}),
		kgo.NewErrFetch(context.Canceled)...)
	got := map[int32][]int64{}
	entries := 0
	merged := mergeFetches(a, b)
	merged.EachPartition(func(p kgo.FetchTopicPartition) {
		entries++
		for _, r := range p.Records {
			got[p.Partition] = append(got[p.Partition], r.Offset)
		}
	})
	want := map[int32][]int64{0: {1, 2, 3}, 1: {7}, 2: {4}}
	if !reflect.DeepEqual(got, want) || entries != 3 {
		t.Errorf("merged into %d entries: %v, want 3: %v", entries, got, want)
	}
	merged.EachPartition(func(p kgo.FetchTopicPartition) {
		switch {
		case p.Partition == 1 && (p.HighWatermark != 8 || !errors.Is(p.Err, kerr.NotLeaderForPartition)):
			t.Errorf("partition 1 merged with an entry of errors only: high watermark %d, error %v; want 8 and its error", p.HighWatermark, p.Err)
		case p.Partition != 1 && p.Err != nil:
			t.Errorf("partition %d holds %v", p.Partition, p.Err)
		}
	})
	if a[0].Topics[0].Partitions[0].Records[1].Offset != 2 || len(a[0].Topics[0].Partitions[0].Records) != 2 {
		t.Error("merging changed the first poll's records")
	}
	if mergeFetches(nil, kgo.NewErrFetch(context.Canceled)) != nil {
		t.Error("a poll cut short and nothing else merged into something")
	}
	// The short cuts: a poll merged into nothing, and a poll cut short
	// merged into a poll.
	for name, fs := range map[string]kgo.Fetches{"into nothing": mergeFetches(nil, a), "cut short": mergeFetches(a, kgo.NewErrFetch(context.Canceled))} {
		if n := fs.NumRecords(); n != 3 || len(fs) != 1 || len(fs[0].Topics[0].Partitions) != 2 {
			t.Errorf("merged %s: %d records in %v, want the poll's 3 in its 2 entries", name, n, fs)
		}
	}
}

// acc1Shares returns an offline worker, an assignment of its partition 0,
// a maker of shares whose overlays hold acc-1 at a version, and load, which
// returns the version of acc-1 that a share of b deciding on prev reads.
func acc1Shares(t *testing.T) (w *Worker, a *assigned, share func(version int64) *partBatch, load func(b *batch, prev []*partBatch) int64) {
	t.Helper()
	w, agg := offlineWorker(t, nil)
	a = &assigned{agg: agg, key: partitionKey{"commands", 0}, gen: assignments.Add(1), ids: newIDFilter(0)}
	state, err := agg.EncodeState(agg.Initial())
	if err != nil {
		t.Fatal(err)
	}
	share = func(version int64) *partBatch {
		pb := &partBatch{a: a, overlay: statestore.NewOverlay(agg.Name(), 0, 0)}
		pb.overlay.Put("acc-1", statestore.Entry{Value: agg.Schemas().AppendSnapshot(nil, "acc-1", version, version, state, 0, nil)})
		return pb
	}
	load = func(b *batch, prev []*partBatch) int64 {
		t.Helper()
		pb := &partBatch{b: b, a: a, overlay: statestore.NewOverlay(agg.Name(), 0, 0), ar: w.arenas.get(), prev: prev}
		s, err := pb.load("acc-1")
		if err != nil {
			t.Fatal(err)
		}
		return s.version
	}
	return w, a, share, load
}

// A batch topped up after the end before it (Worker.topUp) can hold an
// aggregate in two shares of a partition, and the batch decided beside
// its end must read the later one.
func TestLoadReadsTheNewestShare(t *testing.T) {
	w, _, share, load := acc1Shares(t)
	if v := load(&batch{w: w}, []*partBatch{share(1), share(2)}); v != 2 {
		t.Fatalf("loaded version %d of the previous batch's shares, want the newer: 2", v)
	}
}

// The commands a batch adds after its first poll (follow, topUp) are
// decided on its own overlays, then on those of the batch before it,
// whose states are not in the state cache until it is applied.
func TestChainReadsTheBatchBefore(t *testing.T) {
	w, a, share, load := acc1Shares(t)
	before := &batch{w: w, parts: []*partBatch{share(2)}}
	for _, tc := range []struct {
		own  []*partBatch
		want int64
	}{
		{nil, 2},                    // only the batch before changed it
		{[]*partBatch{share(3)}, 3}, // the batch's own change is newer
	} {
		b := &batch{w: w, parts: tc.own}
		b.chain(before)
		if v := load(b, b.prev[a]); v != tc.want {
			t.Errorf("with %d shares of its own, loaded version %d, want %d", len(tc.own), v, tc.want)
		}
	}
}

// shares keeps each aggregate's records in one share, in order, and splits
// only what is worth it.
func TestShares(t *testing.T) {
	var records []*kgo.Record
	for i := range 4000 {
		records = append(records, &kgo.Record{Key: fmt.Appendf(nil, "acc-%d", i%300), Offset: int64(i)})
	}
	for _, tc := range []struct {
		n, procs, total, want int
	}{
		{4000, 4, 4000, 4},  // one partition in the poll: a share per core
		{4000, 4, 8000, 2},  // half the poll: half the cores
		{4000, 1, 4000, 1},  // one core
		{300, 4, 300, 1},    // too few to split
		{600, 4, 600, 2},    // as many shares as minShare allows
		{4000, 4, 40000, 1}, // a small part of the poll
	} {
		got := shares(records[:tc.n], tc.procs, tc.total)
		if len(got) != tc.want {
			t.Errorf("%d records of %d in the poll on %d cores: %d shares, want %d", tc.n, tc.total, tc.procs, len(got), tc.want)
		}
		share, last, n := map[string]int{}, map[string]int64{}, 0
		for i, rs := range got {
			for _, r := range rs {
				k := string(r.Key)
				if j, ok := share[k]; ok && (j != i || r.Offset <= last[k]) {
					t.Fatalf("%s at offset %d: in share %d after share %d at %d", k, r.Offset, i, j, last[k])
				}
				share[k], last[k] = i, r.Offset
				n++
			}
		}
		if n != tc.n {
			t.Errorf("shares hold %d records, want %d", n, tc.n)
		}
	}
}

// A transaction during which partitions of the worker are revoked aborts
// (kafkatxn.Session.End), even with its offsets already in it: the first
// worker's first transaction is held after its flush until a second
// worker's join has taken partitions from it. Every command is still
// answered once, by one of the two.
func TestRevokeAbortsTheTransaction(t *testing.T) {
	e := newEnv(t, 8)
	m := newModel()
	var held atomic.Bool
	release := make(chan struct{})
	w1 := e.start(t.TempDir(), "w1", func(c *Config) {
		c.AtPoint = func(p Point) {
			if p == AfterProduce && held.CompareAndSwap(false, true) {
				<-release
			}
		}
	})
	steps := script("s", 200, 20)
	want := e.run(m, steps)
	owned := func() int {
		w1.w.mu.Lock()
		defer w1.w.mu.Unlock()
		return len(w1.w.parts)
	}
	waitUntil := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no %s after 30s", what)
			}
		}
	}
	waitUntil("transaction held", held.Load)
	e.start(t.TempDir(), "w2")
	waitUntil("revoke", func() bool { return owned() < 8 })
	close(release)
	e.check(m, want, len(steps))
	var c dto.Metric
	if err := w1.w.metrics.aborts.WithLabelValues(abortRevoked).Write(&c); err != nil {
		t.Fatal(err)
	}
	if c.GetCounter().GetValue() == 0 {
		t.Fatal("no transaction aborted for a revoke")
	}
}

// On a cluster without KIP-890 part 2 (its transaction.version feature
// below 2), a transaction's offsets are added to it with AddOffsetsToTxn
// before TxnOffsetCommit, as franz-go adds its partitions with
// AddPartitionsToTxn; every command is still answered once.
func TestTransactionsBeforeKIP890(t *testing.T) {
	e := newEnv(t, 4)
	req := kmsg.NewPtrUpdateFeaturesRequest()
	u := kmsg.NewUpdateFeaturesRequestFeatureUpdate()
	u.Feature, u.MaxVersionLevel, u.UpgradeType = "transaction.version", 1, 2 // a safe downgrade
	req.FeatureUpdates = append(req.FeatureUpdates, u)
	resp, err := req.RequestWith(context.Background(), e.cl)
	if err == nil {
		err = kerr.ErrorForCode(resp.ErrorCode)
	}
	if err != nil {
		t.Fatal(err)
	}
	var adds atomic.Int64
	e.cluster.ControlKey(int16(kmsg.AddOffsetsToTxn), func(kmsg.Request) (kmsg.Response, error, bool) {
		e.cluster.KeepControl()
		adds.Add(1)
		return nil, nil, false
	})
	m := newModel()
	w := e.start(t.TempDir(), "w1")
	steps := script("s", 200, 20)
	want := e.run(m, steps)
	e.check(m, want, len(steps))
	errIsNil(t, w.stop())
	if adds.Load() == 0 {
		t.Fatal("no AddOffsetsToTxn was sent")
	}
}

// Two workers in one group split the partitions and together answer every
// command once.
func TestTwoWorkersSplitPartitions(t *testing.T) {
	eachPollSize(t, testTwoWorkersSplitPartitions)
}

func testTwoWorkersSplitPartitions(t *testing.T, polls func(*Config)) {
	e := newEnv(t, 8)
	m := newModel()
	w1 := e.start(t.TempDir(), "w1", polls)
	w2 := e.start(t.TempDir(), "w2", polls)
	steps := script("s", 400, 40)
	want := e.run(m, steps)
	e.check(m, want, len(steps))
	owned := func(w *running) int {
		w.w.mu.Lock()
		defer w.w.mu.Unlock()
		return len(w.w.parts)
	}
	// The first worker hears of the second one's join at its next
	// heartbeat: the split may come after the commands were answered.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		a, b := owned(w1), owned(w2)
		if a+b == 8 && a > 0 && b > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("workers own %d and %d partitions, want a split of 8", a, b)
		}
	}
	errIsNil(t, w1.stop())
	// The survivor takes over and goes on.
	more := script("t", 100, 40)[40:]
	want = e.run(m, more)
	e.check(m, want, len(steps)+len(more))
	errIsNil(t, w2.stop())
}

// A command rejected before its aggregate has events, sent again with the
// same id after the aggregate was created, gets its first reply again: it is
// not decided a second time.
func TestRetryOfCommandRejectedBeforeTheFirstEvent(t *testing.T) {
	e := newEnv(t, 2)
	w := e.start(t.TempDir(), "w1")
	defer w.stop()
	e.produce(
		e.command("acc", "early", accounts.Deposit{Amount: 5}),
		e.command("acc", "open", accounts.OpenAccount{Owner: "ada"}),
		e.command("acc", "early", accounts.Deposit{Amount: 5}),
	)
	deadline := time.Now().Add(30 * time.Second)
	for {
		var early []schemas.Reply
		for _, r := range e.readAll(e.topics.Replies) {
			v, _ := e.agg.Schemas().Decode(schemas.ReplyName, r.Value)
			if rep := v.(schemas.Reply); rep.CommandID == "early" {
				early = append(early, rep)
			}
		}
		if len(early) == 2 {
			if early[0] != early[1] || early[0].Reason != "no_account" {
				t.Fatalf("the retry was decided again: %+v then %+v", early[0], early[1])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d replies to the early command after 30s, want 2", len(early))
		}
		time.Sleep(50 * time.Millisecond) // polling a topic: there is no condition to wait on
	}
	if n := len(e.checkEvents()["acc"]); n != 1 {
		t.Fatalf("%d events, want the open only", n)
	}
}

// The dedupe window keeps its replies without their aggregate id, which its
// snapshot holds once, and a retry's reply has the id all the same; a
// window written with the ids (before they were left out) is read and
// answered from as before.
func TestDedupeWindowLeavesTheAggregateIDOut(t *testing.T) {
	e := newEnv(t, 2)
	reg := e.agg.Schemas()
	state, err := e.agg.EncodeState(accounts.Account{Opened: true, Owner: "ada"})
	errIsNil(t, err)
	open := schemas.Reply{CommandID: "open", AggregateID: "acc", Status: schemas.Accepted, Version: 1, Events: 1}
	_, old, err := reg.Encode(schemas.Snapshot{AggregateID: "acc", Version: 1, CommandOffset: -1, State: state, Recent: []schemas.Reply{open}})
	errIsNil(t, err)
	e.produce(&kgo.Record{Topic: e.topics.Snapshots, Partition: topology.Partition([]byte("acc"), e.agg.Partitions()), Key: []byte("acc"), Value: old})

	w := e.start(t.TempDir(), "w1") // restores the snapshot above from the changelog
	deposit := accounts.Deposit{Amount: 5}
	e.produce(e.command("acc", "open", accounts.OpenAccount{Owner: "ada"}), e.command("acc", "dep", deposit), e.command("acc", "dep", deposit))
	dep := schemas.Reply{CommandID: "dep", AggregateID: "acc", Status: schemas.Accepted, Version: 2, Events: 1}
	checkReplies := func(want map[schemas.Reply]int) {
		t.Helper()
		got := map[schemas.Reply]int{}
		n := 0
		for _, c := range want {
			n += c
		}
		for _, rep := range e.waitRepliesRaw(n) {
			got[rep]++
		}
		if !maps.Equal(got, want) {
			t.Fatalf("replies %v, want %v", got, want)
		}
	}
	checkReplies(map[schemas.Reply]int{open: 1, dep: 2})
	errIsNil(t, w.stop())
	// A worker on an empty store reads the window back from the changelog,
	// the deposit's reply without its id, and answers a third send the same.
	w = e.start(t.TempDir(), "w1")
	defer w.stop()
	e.produce(e.command("acc", "dep", deposit))
	checkReplies(map[schemas.Reply]int{open: 1, dep: 3})

	var window []string // the aggregate ids of the latest snapshot's window
	for _, r := range e.readAll(e.topics.Snapshots) {
		_, _, bodies, err := reg.ReadSnapshot(r.Value)
		errIsNil(t, err)
		window = window[:0]
		for body, rest, ok := schemas.NextReply(bodies); ok; body, rest, ok = schemas.NextReply(rest) {
			rep, err := schemas.ReadReply(body)
			errIsNil(t, err)
			window = append(window, rep.AggregateID)
		}
	}
	if !slices.Equal(window, []string{"acc", ""}) {
		t.Errorf("aggregate ids in the latest window %q, want the old reply's and an empty one", window)
	}
}

// Defence in depth (KAFKA-20416): when the group's committed offsets go
// back (a reset, a lost offset), the commands already applied are not
// decided or answered again, retries of them included, whether the worker's
// state comes from its Pebble store or from the changelog alone.
func TestGroupOffsetsGoingBackAnswerNothingTwice(t *testing.T) {
	e := newEnv(t, 2)
	m := newModel()
	steps := script("s", 60, 6)
	steps = append(steps, steps[20], steps[30]) // retries of earlier commands
	want := map[string]schemas.Reply{}
	for _, s := range steps {
		e.produce(e.command(s.id, s.cmdID, s.cmd))
		if _, dup := want[s.cmdID]; !dup {
			want[s.cmdID] = m.apply(s)
		}
	}
	dir := t.TempDir()
	w := e.start(dir, "w1")
	replies := len(e.waitRepliesRaw(len(steps)))
	errIsNil(t, w.stop())

	for i, d := range []string{dir, t.TempDir()} {
		adm := kadm.NewClient(e.cl)
		offsets := kadm.Offsets{}
		for p := range e.agg.Partitions() {
			offsets.Add(kadm.Offset{Topic: e.topics.Commands, Partition: p, At: 0, LeaderEpoch: -1})
		}
		if err := adm.CommitAllOffsets(context.Background(), e.app.Group(), offsets); err != nil {
			t.Fatal(err)
		}
		w := e.start(d, "w1")
		marker := fmt.Sprint("marker-", i)
		e.produce(e.command("acc-0", marker, accounts.Deposit{Amount: 1}))
		want[marker] = m.apply(step{id: "acc-0", cmdID: marker, cmd: accounts.Deposit{Amount: 1}})
		replies++
		got := e.waitRepliesRaw(replies)
		if len(got) != replies {
			t.Fatalf("%d replies after the offsets went back, want %d: applied commands were answered again", len(got), replies)
		}
		errIsNil(t, w.stop())
	}
	for _, rep := range e.waitRepliesRaw(replies) {
		if rep != want[rep.CommandID] {
			t.Errorf("reply %+v, want %+v", rep, want[rep.CommandID])
		}
	}
	e.checkEvents()
}

// The metrics count what committed, once: a batch's shares of several
// partitions are summed, and the commands of a transaction that aborted
// (a produce refused) and was redone are counted at the redo only.
func TestMetricsCountCommittedCommandsOnce(t *testing.T) {
	e := newEnv(t, 4)
	m := newModel()
	w := e.start(t.TempDir(), "w1")
	h := e.cluster.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: e.topics.Events, Err: kerr.InvalidRecord, Count: 1})
	steps := script("s", 120, 30)
	want := e.run(m, steps)
	e.check(m, want, len(steps))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := h.Wait(ctx, 1); err != nil {
		t.Fatal(err)
	}
	wantStatus := map[string]float64{}
	for _, r := range want {
		wantStatus[string(r.Status)]++
	}
	value := func(c prometheus.Collector) float64 {
		var d dto.Metric
		if err := c.(prometheus.Metric).Write(&d); err != nil {
			t.Fatal(err)
		}
		return d.GetCounter().GetValue()
	}
	mt := w.w.metrics
	answered := func() float64 {
		n := 0.0
		for status := range wantStatus {
			n += value(mt.commands.WithLabelValues(e.agg.Name(), status))
		}
		return n
	}
	// The reply is read once its transaction committed, which the worker
	// counts just after: wait for the count to reach the commands.
	for deadline := time.Now().Add(10 * time.Second); answered() < float64(len(steps)); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			break
		}
	}
	for status, n := range wantStatus {
		if got := value(mt.commands.WithLabelValues(e.agg.Name(), status)); got != n {
			t.Errorf("commands_total{status=%s} = %v, want %v", status, got, n)
		}
	}
	if got, want := value(mt.records.WithLabelValues(kindReply)), float64(len(steps)); got != want {
		t.Errorf("records_produced_total{kind=reply} = %v, want %v", got, want)
	}
	if got, want := value(mt.records.WithLabelValues(kindEvent)), wantStatus[string(schemas.Accepted)]; got != want {
		t.Errorf("records_produced_total{kind=event} = %v, want %v (one per accepted command)", got, want)
	}
	if value(mt.transactions.WithLabelValues("aborted")) == 0 {
		t.Error("no transaction aborted: the refused produce was not seen")
	}
	// Every partition was polled to its end: a lag series each, at 0.
	lags := make(chan prometheus.Metric, 2*e.agg.Partitions())
	mt.lag.Collect(lags)
	close(lags)
	n := 0
	for l := range lags {
		var d dto.Metric
		if err := l.Write(&d); err != nil {
			t.Fatal(err)
		}
		if d.GetGauge().GetValue() != 0 {
			t.Errorf("consumer lag %v = %v, want 0", d.GetLabel(), d.GetGauge().GetValue())
		}
		n++
	}
	if n != int(e.agg.Partitions()) {
		t.Errorf("%d consumer lag series, want one per partition (%d)", n, e.agg.Partitions())
	}
	errIsNil(t, w.stop())
}

// A read for a version not applied yet waits for the write that applies
// it, and one for a version never reached gives up with
// ErrVersionNotReached; transactions committed while no reader waits
// leave the next reader's wait working.
func TestReadWaitsForTheVersion(t *testing.T) {
	e := newEnv(t, 2)
	r := e.start(t.TempDir(), "w1")
	e.produce(e.command("acc-r", "c1", accounts.OpenAccount{Owner: "ada"}))
	for i := range 5 { // transactions with no reader waiting
		e.produce(e.command("acc-r", fmt.Sprint("d", i), accounts.Deposit{Amount: 1}))
	}
	e.waitReplies(6)
	read := func(ctx context.Context, minVersion int64) (Aggregate, error) {
		return r.w.Read(ctx, e.agg.Name(), "acc-r", minVersion)
	}
	if got, err := read(t.Context(), 6); err != nil || got.Version != 6 {
		t.Fatalf("read at version 6: %+v, %v", got, err)
	}

	got := make(chan Aggregate, 1)
	go func() {
		a, err := read(t.Context(), 7)
		if err != nil {
			t.Errorf("read waiting for version 7: %v", err)
		}
		got <- a
	}()
	for taken := false; !taken; { // the reader holds the channel the next write closes
		r.w.mu.Lock()
		taken = r.w.appliedTaken
		r.w.mu.Unlock()
		if !taken {
			time.Sleep(time.Millisecond) // nothing to wait on: the reader runs on its own
		}
	}
	e.produce(e.command("acc-r", "d5", accounts.Deposit{Amount: 1}))
	select {
	case a := <-got:
		if a.Version != 7 {
			t.Errorf("woken at version %d, want 7", a.Version)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a read waiting for version 7 was not woken by its write")
	}

	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if a, err := read(ctx, 9); !errors.Is(err, ErrVersionNotReached) || a.Version != 7 {
		t.Errorf("read for version 9: %+v, %v; want version 7 and ErrVersionNotReached", a, err)
	}
	errIsNil(t, r.stop())
}
