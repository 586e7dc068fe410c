package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/deciderhq/decider/client"
	"github.com/deciderhq/decider/examples/accounts"
	"github.com/deciderhq/decider/schemas"
	"github.com/deciderhq/decider/topology"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// A real worker (decider dev) answers commands sent through the client, a
// command produced on the wrong partition, a command sent twice with one id
// and one without a reply address: verify finds every invariant holding and
// counts them all.
func TestVerifyCleanRun(t *testing.T) {
	listen, dir := freeAddr(t), t.TempDir()
	stop := dev(t, listen, dir, "")
	defer stop()
	kafka := []kgo.Opt{kgo.SeedBrokers(listen)}
	app, err := accounts.App(4)
	if err != nil {
		t.Fatal(err)
	}
	agg, _ := app.Aggregate(accounts.Name)
	cl, err := client.New(client.Config{App: "bank", Kafka: kafka, Schemas: agg.Schemas()})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, s := range []struct {
		id    string
		cmd   accounts.Command
		opts  []client.Option
		want  schemas.Status
		event int32
	}{
		{"a1", accounts.OpenAccount{Owner: "ada"}, nil, schemas.Accepted, 1},
		{"a1", accounts.Deposit{Amount: 100}, nil, schemas.Accepted, 1},
		{"a1", accounts.Withdraw{Amount: 500}, nil, schemas.Rejected, 0},
		{"a2", accounts.OpenAccount{Owner: "bob"}, nil, schemas.Accepted, 1},
		{"a2", accounts.Deposit{Amount: 50}, []client.Option{client.CommandID("a2-d")}, schemas.Accepted, 1},
		{"a2", accounts.Deposit{Amount: 50}, []client.Option{client.CommandID("a2-d")}, schemas.Accepted, 1}, // the first reply again
		{"a3", accounts.Deposit{Amount: 10}, nil, schemas.Rejected, 0},
	} {
		rep, err := cl.Send(ctx, accounts.Name, s.id, s.cmd, s.opts...)
		if err != nil || rep.Status != s.want || rep.Events != s.event {
			t.Fatalf("send %T to %s: %+v, %v", s.cmd, s.id, rep, err)
		}
	}
	topics := app.Topics(agg)
	producer, err := kgo.NewClient(append(kafka, kgo.RecordPartitioner(kgo.ManualPartitioner()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	open := verifyCommand(t, agg, topics, "a3", "a3-open", accounts.OpenAccount{Owner: "cy"}, topics.Replies)
	open.Partition = (open.Partition + 1) % 4 // another partitioner: the worker forwards it
	if err := producer.ProduceSync(ctx, open).FirstErr(); err != nil {
		t.Fatal(err)
	}
	waitRecord(t, ctx, kafka, topics.Replies, func(r *kgo.Record) bool { return string(r.Key) == "a3-open" })
	if err := producer.ProduceSync(ctx, verifyCommand(t, agg, topics, "a3", "a3-d", accounts.Deposit{Amount: 5}, "")).FirstErr(); err != nil {
		t.Fatal(err)
	}
	waitRecord(t, ctx, kafka, topics.Events, func(r *kgo.Record) bool { return verifyHeader(r, schemas.HeaderCausationID) == "a3-d" })

	var progress bytes.Buffer
	rep, err := verify(ctx, kafka, app, &progress)
	if err != nil {
		rep.print(&progress)
		t.Fatalf("verify: %v\n%s", err, progress.String())
	}
	want := report{
		App: "bank", Partitions: 4,
		Commands: 10, Misrouted: 1, NoReply: 1, // 7 sent, the misrouted one and its forwarded copy, the one without reply address
		Replies: 8, Events: 6, Aggregates: 3, Snapshots: 9, // every command read writes one: the rejected and the duplicate included
	}
	if rep.total() != 0 || !sameCounts(rep, want) {
		var out bytes.Buffer
		rep.print(&out)
		t.Fatalf("verify found\n%s\nwant counts %+v", out.String(), want)
	}
	if !strings.Contains(progress.String(), "4/4 partitions done") {
		t.Errorf("no progress line per partition:\n%s", progress.String())
	}

	var out bytes.Buffer
	if err := dispatch(ctx, []string{"verify", "--brokers", listen}, &out); err != nil {
		t.Fatalf("decider verify: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "ok: every invariant holds") || !strings.Contains(out.String(), "events      6") {
		t.Errorf("decider verify printed:\n%s", out.String())
	}
}

func sameCounts(a, b report) bool {
	a.Violations, a.Notes = b.Violations, b.Notes
	return fmt.Sprint(a) == fmt.Sprint(b)
}

// waitRecord reads topic, read_committed, until a record satisfies pred.
func waitRecord(t *testing.T, ctx context.Context, kafka []kgo.Opt, topic string, pred func(*kgo.Record) bool) {
	t.Helper()
	cl, err := kgo.NewClient(append(kafka, kgo.ConsumeTopics(topic), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for {
		f := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("no record awaited in %s: %v", topic, ctx.Err())
		}
		for it := f.RecordIter(); !it.Done(); {
			if pred(it.Next()) {
				return
			}
		}
	}
}

func verifyHeader(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// verifyCommand builds a command record for aggregate id on the partition
// its key hashes to; replyTo "" asks for no reply.
func verifyCommand(t *testing.T, agg *topology.Aggregate, topics topology.Topics, id, cmdID string, cmd any, replyTo string) *kgo.Record {
	t.Helper()
	typ, payload, err := agg.Schemas().Encode(cmd)
	if err != nil {
		t.Fatal(err)
	}
	r := &kgo.Record{
		Topic: topics.Commands, Partition: topology.Partition([]byte(id), agg.Partitions()), Key: []byte(id), Value: payload,
		Headers: []kgo.RecordHeader{
			{Key: schemas.HeaderSpecVersion, Value: []byte(schemas.SpecVersion)},
			{Key: schemas.HeaderID, Value: []byte(cmdID)},
			{Key: schemas.HeaderType, Value: []byte(typ)},
			{Key: schemas.HeaderSource, Value: []byte("verify-test")},
		},
	}
	if replyTo != "" {
		r.Headers = append(r.Headers, kgo.RecordHeader{Key: schemas.HeaderReplyTo, Value: []byte(replyTo)})
	}
	return r
}

// verifySim writes what a worker would write, without one: each command
// with its events, snapshot and reply, decided by the example domain. A
// test then forges one record to break one invariant.
type verifySim struct {
	t       *testing.T
	group   string
	agg     *topology.Aggregate
	topics  topology.Topics
	n       int32
	state   map[string]accounts.Account
	version map[string]int64
	seen    map[string]schemas.Reply // aggregate/command id → first reply
	recs    []*kgo.Record
}

// simSent is what one command produced.
type simSent struct {
	command, snapshot, reply *kgo.Record
	events                   []*kgo.Record
}

type simOpt int

const (
	simNoReplyTo   simOpt = 1 << iota // the command asks for no reply
	simMisrouted                      // first produced on a wrong partition, then forwarded
	simUnprocessed                    // no outputs at all: lost
)

func newVerifySim(t *testing.T, app *topology.App) *verifySim {
	agg := app.Aggregates()[0]
	return &verifySim{
		t: t, group: app.Group(), agg: agg, topics: app.Topics(agg), n: agg.Partitions(),
		state: map[string]accounts.Account{}, version: map[string]int64{}, seen: map[string]schemas.Reply{},
	}
}

func (s *verifySim) encode(v any) []byte {
	s.t.Helper()
	_, b, err := s.agg.Schemas().Encode(v)
	if err != nil {
		s.t.Fatal(err)
	}
	return b
}

func (s *verifySim) send(id, cmdID string, cmd accounts.Command, o simOpt) simSent {
	s.t.Helper()
	replyTo := s.topics.Replies
	if o&simNoReplyTo != 0 {
		replyTo = ""
	}
	var out simSent
	out.command = verifyCommand(s.t, s.agg, s.topics, id, cmdID, cmd, replyTo)
	if o&simMisrouted != 0 {
		wrong := *out.command
		wrong.Partition = (wrong.Partition + 1) % s.n
		s.recs = append(s.recs, &wrong)
	}
	s.recs = append(s.recs, out.command)
	if o&simUnprocessed != 0 {
		return out
	}
	p := out.command.Partition
	rep, dup := s.seen[id+"/"+cmdID]
	if !dup {
		st, v := s.state[id], s.version[id]
		rep = schemas.Reply{CommandID: cmdID, AggregateID: id, Version: v, Status: schemas.Accepted}
		events, err := accounts.Decide(st, cmd)
		if err != nil {
			rep.Status, rep.Reason = schemas.Rejected, err.Error()
		}
		for _, e := range events {
			v++
			st = accounts.Evolve(st, e)
			typ, payload, err := s.agg.Schemas().Encode(e)
			if err != nil {
				s.t.Fatal(err)
			}
			ev := &kgo.Record{
				Topic: s.topics.Events, Partition: p, Key: []byte(id), Value: payload,
				Headers: []kgo.RecordHeader{
					{Key: schemas.HeaderID, Value: []byte(id + "/" + strconv.FormatInt(v, 10))},
					{Key: schemas.HeaderType, Value: []byte(typ)},
					{Key: schemas.HeaderCausationID, Value: []byte(cmdID)},
					{Key: schemas.HeaderAggregateVersion, Value: []byte(strconv.FormatInt(v, 10))},
				},
			}
			out.events = append(out.events, ev)
			s.recs = append(s.recs, ev)
		}
		rep.Version, rep.Events = v, int32(len(events))
		s.state[id], s.version[id], s.seen[id+"/"+cmdID] = st, v, rep
		if v > 0 {
			state := s.encode(st)
			out.snapshot = &kgo.Record{Topic: s.topics.Snapshots, Partition: p, Key: []byte(id),
				Value: s.encode(schemas.Snapshot{AggregateID: id, Version: v, State: state})}
			s.recs = append(s.recs, out.snapshot)
		}
	}
	if replyTo != "" {
		out.reply = &kgo.Record{Topic: s.topics.Replies, Partition: topology.Partition([]byte(cmdID), s.n), Key: []byte(cmdID), Value: s.encode(rep)}
		s.recs = append(s.recs, out.reply)
	}
	return out
}

// world sends the commands every forged case starts from: counts as in
// TestVerifyCleanRun.
func (s *verifySim) world() map[string]simSent {
	return map[string]simSent{
		"a1-open":     s.send("a1", "a1-open", accounts.OpenAccount{Owner: "ada"}, 0),
		"a1-deposit":  s.send("a1", "a1-deposit", accounts.Deposit{Amount: 100}, 0),
		"a1-withdraw": s.send("a1", "a1-withdraw", accounts.Withdraw{Amount: 500}, 0),
		"a2-open":     s.send("a2", "a2-open", accounts.OpenAccount{Owner: "bob"}, 0),
		"a2-d":        s.send("a2", "a2-d", accounts.Deposit{Amount: 50}, 0),
		"a2-d again":  s.send("a2", "a2-d", accounts.Deposit{Amount: 50}, 0),
		"a3-early":    s.send("a3", "a3-early", accounts.Deposit{Amount: 10}, 0),
		"a3-open":     s.send("a3", "a3-open", accounts.OpenAccount{Owner: "cy"}, simMisrouted),
		"a3-d":        s.send("a3", "a3-d", accounts.Deposit{Amount: 5}, simNoReplyTo),
	}
}

// write produces the records and commits the group's offsets at the end of
// the commands topic, as a drained worker would have.
func (s *verifySim) write(ctx context.Context, cl *kgo.Client) {
	s.t.Helper()
	if err := cl.ProduceSync(ctx, s.recs...).FirstErr(); err != nil {
		s.t.Fatal(err)
	}
	s.recs = nil
	adm := kadm.NewClient(cl)
	ends, err := adm.ListEndOffsets(ctx, s.topics.Commands)
	if err != nil {
		s.t.Fatal(err)
	}
	resp, err := adm.CommitOffsets(ctx, s.group, ends.Offsets())
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		s.t.Fatal(err)
	}
}

// Each forged record breaks one invariant, and verify reports exactly that
// class, once.
func TestVerifyFindsEachViolation(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	kafka := []kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...)}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	reply := func(s *verifySim, r schemas.Reply, partition int32) *kgo.Record {
		return &kgo.Record{Topic: s.topics.Replies, Partition: partition, Key: []byte(r.CommandID), Value: s.encode(r)}
	}
	for _, tc := range []struct {
		name  string
		class violationClass // numViolationClasses: none
		forge func(s *verifySim, w map[string]simSent)
	}{
		{"clean", numViolationClasses, func(*verifySim, map[string]simSent) {}},
		{"lost", classLost, func(s *verifySim, _ map[string]simSent) {
			s.send("a1", "a1-unanswered", accounts.Deposit{Amount: 1}, simUnprocessed)
		}},
		{"lost forward", classLost, func(s *verifySim, _ map[string]simSent) {
			r := verifyCommand(s.t, s.agg, s.topics, "a2", "a2-misrouted", accounts.Deposit{Amount: 1}, s.topics.Replies)
			r.Partition = (r.Partition + 1) % s.n // never forwarded, never answered
			s.recs = append(s.recs, r)
		}},
		{"duplicated", classDuplicated, func(s *verifySim, w map[string]simSent) {
			again := *w["a1-deposit"].reply
			s.recs = append(s.recs, &again)
		}},
		{"conflicting", classConflicting, func(s *verifySim, w map[string]simSent) {
			r := w["a2-d again"].reply
			r.Value = s.encode(schemas.Reply{CommandID: "a2-d", AggregateID: "a2", Status: schemas.Accepted, Version: 3, Events: 1})
		}},
		{"orphan", classOrphan, func(s *verifySim, _ map[string]simSent) {
			s.recs = append(s.recs, reply(s, schemas.Reply{CommandID: "ghost", AggregateID: "a1", Status: schemas.Accepted}, 0))
		}},
		{"version gap", classVersion, func(s *verifySim, w map[string]simSent) {
			ev := w["a1-deposit"].events[0]
			for i, h := range ev.Headers {
				if h.Key == schemas.HeaderAggregateVersion {
					ev.Headers[i].Value = []byte("3")
				}
			}
		}},
		{"wrong partition", classPartition, func(s *verifySim, w map[string]simSent) {
			moved := *w["a1-deposit"].events[0]
			moved.Partition = (moved.Partition + 1) % s.n
			s.recs = append(s.recs, &moved)
		}},
		{"event count", classEvents, func(s *verifySim, w map[string]simSent) {
			w["a1-deposit"].reply.Value = s.encode(schemas.Reply{CommandID: "a1-deposit", AggregateID: "a1", Status: schemas.Accepted, Version: 3, Events: 2})
		}},
		{"causation", classCausation, func(s *verifySim, w map[string]simSent) {
			ev := w["a3-d"].events[0] // a command without a reply: only its causation can be wrong
			for i, h := range ev.Headers {
				if h.Key == schemas.HeaderCausationID {
					ev.Headers[i].Value = []byte("a1-deposit") // a command of another aggregate
				}
			}
		}},
		{"snapshot", classSnapshot, func(s *verifySim, w map[string]simSent) {
			st := s.encode(accounts.Account{Opened: true, Owner: "ada", Balance: 101})
			s.recs = append(s.recs, &kgo.Record{Topic: s.topics.Snapshots, Partition: w["a1-open"].snapshot.Partition, Key: []byte("a1"),
				Value: s.encode(schemas.Snapshot{AggregateID: "a1", Version: 2, State: st})})
		}},
		{"undecodable", classUndecodable, func(s *verifySim, w map[string]simSent) {
			w["a2-open"].events[0].Value = []byte("not avro")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := "v" + strings.ReplaceAll(tc.name, " ", "-")
			agg, err := accounts.Aggregate(4)
			if err != nil {
				t.Fatal(err)
			}
			app, err := topology.NewApp(name, agg)
			if err != nil {
				t.Fatal(err)
			}
			cl, s := simulate(ctx, t, kafka, app)
			w := s.world()
			tc.forge(s, w)
			s.write(ctx, cl)

			rep, err := verify(ctx, kafka, app, nil)
			var out bytes.Buffer
			rep.print(&out)
			if tc.class == numViolationClasses {
				want := report{App: name, Partitions: 4, Commands: 10, Misrouted: 1, NoReply: 1, Replies: 8, Events: 6, Aggregates: 3, Snapshots: 7}
				if err != nil || !sameCounts(rep, want) {
					t.Fatalf("verify: %v\n%s\nwant counts %+v", err, out.String(), want)
				}
				return
			}
			if !errors.Is(err, errViolations) || rep.total() != 1 || rep.count(tc.class) != 1 || len(rep.Violations[tc.class].Examples) != 1 {
				t.Fatalf("verify: %v\n%s\nwant exactly one %s violation", err, out.String(), tc.class)
			}
			t.Logf("%s: %s", tc.class, rep.Violations[tc.class].Examples[0])

			out.Reset()
			err = dispatch(ctx, []string{"verify", "--brokers", c.ListenAddrs()[0], "--app", name}, &out)
			if exitCode(err) != 4 || !strings.Contains(out.String(), "\n"+tc.class.String()+" (1):\n") {
				t.Fatalf("decider verify: %v (exit %d), printed:\n%s", err, exitCode(err), out.String())
			}
		})
	}
}

// A command after the group's committed offset is pending, not lost; so is
// a misrouted one whose forwarded copy is pending.
func TestVerifyPendingIsNotLost(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	kafka := []kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	app, err := accounts.App(4)
	if err != nil {
		t.Fatal(err)
	}
	cl, s := simulate(ctx, t, kafka, app)
	s.world()
	forward := verifyCommand(t, s.agg, s.topics, "a2", "a2-forwarded", accounts.Deposit{Amount: 1}, s.topics.Replies)
	misrouted := *forward
	misrouted.Partition = (forward.Partition + 1) % s.n
	s.recs = append(s.recs, &misrouted)
	s.write(ctx, cl) // processed up to here: the misrouted command was forwarded
	s.send("a1", "a1-later", accounts.Deposit{Amount: 1}, simUnprocessed)
	s.recs = append(s.recs, forward)
	if err := cl.ProduceSync(ctx, s.recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	rep, err := verify(ctx, kafka, app, nil)
	if err != nil || rep.Pending != 2 || rep.Commands != 13 || len(rep.Notes) != 1 {
		var out bytes.Buffer
		rep.print(&out)
		t.Fatalf("verify: %v\n%s\nwant 13 commands, 2 pending, a note", err, out.String())
	}
}

// The direct readers of replies and snapshots agree with the registry.
func TestVerifyParsesLikeTheRegistry(t *testing.T) {
	app, err := accounts.App(4)
	if err != nil {
		t.Fatal(err)
	}
	agg := app.Aggregates()[0]
	c := &aggCheck{agg: agg}
	if err := c.initSchemas(); err != nil {
		t.Fatal(err)
	}
	reg := agg.Schemas()
	for _, r := range []schemas.Reply{
		{CommandID: "c-1", AggregateID: "acc-1", Status: schemas.Accepted, Version: 300, Events: 2},
		{CommandID: strings.Repeat("x", 200), AggregateID: "", Status: schemas.Failed, Version: -1, Reason: "handler_panic"},
	} {
		_, b, err := reg.Encode(r)
		if err != nil {
			t.Fatal(err)
		}
		f, err := c.parseReply(b)
		if err != nil || string(f.commandID) != r.CommandID || string(f.aggregateID) != r.AggregateID ||
			c.statuses[f.status] != string(r.Status) || f.events != r.Events {
			t.Errorf("parseReply(%+v) = %+v, %v", r, f, err)
		}
	}
	if _, err := c.parseReply([]byte{0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 9}); err == nil {
		t.Error("parseReply of an unknown fingerprint succeeded")
	}
	state := []byte{0xC3, 0x01, 9, 9}
	_, b, err := reg.Encode(schemas.Snapshot{AggregateID: "acc-9", Version: 1 << 40, CommandOffset: 77, State: state,
		Recent: []schemas.Reply{{CommandID: "c", Status: schemas.Rejected}}})
	if err != nil {
		t.Fatal(err)
	}
	id, v, st, err := c.parseSnapshot(b)
	if err != nil || string(id) != "acc-9" || v != 1<<40 || !bytes.Equal(st, state) {
		t.Errorf("parseSnapshot = %q, %d, %x, %v", id, v, st, err)
	}
	for _, s := range []string{"1", "42", "9000000000"} {
		if v, ok := parseVersion([]byte(s)); !ok || strconv.FormatInt(v, 10) != s {
			t.Errorf("parseVersion(%q) = %d, %v", s, v, ok)
		}
	}
	for _, s := range []string{"", "0", "-1", "1x", "99999999999999999999"} {
		if v, ok := parseVersion([]byte(s)); ok {
			t.Errorf("parseVersion(%q) = %d, want not a version", s, v)
		}
	}
}

// simulate creates app's topics and returns a producer to forge records
// with (closed when the test ends) and a simulation of app.
func simulate(ctx context.Context, t *testing.T, kafka []kgo.Opt, app *topology.App) (*kgo.Client, *verifySim) {
	t.Helper()
	if err := ensureTopics(ctx, kafka, app); err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(append(kafka, kgo.RecordPartitioner(kgo.ManualPartitioner()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl, newVerifySim(t, app)
}
