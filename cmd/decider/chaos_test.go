package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/deciderhq/decider/examples/accounts"
	"github.com/deciderhq/decider/schemas"
	"github.com/deciderhq/decider/topology"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// The chaos test runs a broker process and worker processes of app bank,
// sends a paced stream of commands from this process, and meanwhile kills
// workers with SIGKILL and restarts them, pauses one past its session timeout
// (a zombie that must be fenced), and scales 1→3→1. At the end every command
// must have exactly the reply a reference model of the domain computes from
// the commands in partition order, and the events must be exactly the model's.
//
// Short form in `go test ./...`; the long form runs for DECIDER_SOAK (a
// duration, e.g. DECIDER_SOAK=10m go test -run TestChaos -v ./cmd/decider).
func TestChaos(t *testing.T) {
	duration := chaosDuration(t, 20*time.Second)
	c := newChaos(t, 4)
	c.startWorker()
	stopSending := c.send(200) // commands per second
	stats := c.disturb(duration)
	sent := stopSending()
	for _, w := range c.workers {
		w.resume()
	}
	c.ensureWorkers(1)
	t.Logf("chaos: %d commands sent in %v; %d kills, %d pauses, %d scale steps", sent, duration, stats.kills, stats.pauses, stats.scales)
	c.check(sent)
	if n := c.selfExits(); n > 0 {
		t.Errorf("%d worker processes exited by themselves", n)
	}
}

// The in-process variant: a three-broker kfake cluster in the test process,
// worker processes, and broker faults injected while commands flow: produce
// errors, NOT_COORDINATOR and CONCURRENT_TRANSACTIONS from the transaction
// coordinator, failed EndTxn and TxnOffsetCommit, coordinator moves and
// partition leader moves, with a kill -9 now and then.
func TestChaosBrokerFaults(t *testing.T) {
	duration := chaosDuration(t, 15*time.Second)
	c, cluster := newChaosInProcess(t, 4)
	c.startWorker()
	c.startWorker()
	stopSending := c.send(200)
	rng := rand.New(rand.NewPCG(5, 6))
	faults := []kfake.Fault{
		{Keys: []kmsg.Key{kmsg.Produce}, Topic: c.topics.Events, Err: kerr.InvalidRecord, Count: 2},
		{Keys: []kmsg.Key{kmsg.Produce}, Topic: c.topics.Snapshots, Err: kerr.NotLeaderForPartition, Count: 3},
		{Keys: []kmsg.Key{kmsg.AddPartitionsToTxn, kmsg.AddOffsetsToTxn}, Err: kerr.NotCoordinator, Count: 3},
		{Keys: []kmsg.Key{kmsg.AddPartitionsToTxn}, Err: kerr.ConcurrentTransactions, Count: 3},
		{Keys: []kmsg.Key{kmsg.EndTxn}, Err: kerr.CoordinatorNotAvailable, Count: 2},
		{Keys: []kmsg.Key{kmsg.EndTxn}, Err: kerr.NotCoordinator, Count: 2},
		{Keys: []kmsg.Key{kmsg.TxnOffsetCommit}, Err: kerr.IllegalGeneration, Count: 1},
		{Keys: []kmsg.Key{kmsg.TxnOffsetCommit}, Err: kerr.CoordinatorLoadInProgress, Count: 2},
	}
	var injected, moves, kills int
	var active *kfake.FaultHandle
	for end := time.Now().Add(duration); time.Now().Before(end); {
		time.Sleep(time.Duration(300+rng.IntN(400)) * time.Millisecond) // the pace of the faults
		switch n := rng.IntN(12); {
		case n < 8:
			// One fault at a time: faults added faster than the workers'
			// retries consume them would pile up into a permanent outage.
			if active != nil {
				active.Remove()
			}
			active = cluster.Fault(faults[rng.IntN(len(faults))])
			injected++
		case n < 10:
			topic := []string{c.topics.Commands, c.topics.Events, c.topics.Snapshots, c.topics.Replies}[rng.IntN(4)]
			if err := cluster.MoveTopicPartition(topic, rng.Int32N(c.partitions), rng.Int32N(3)); err != nil {
				t.Fatal(err)
			}
			moves++
		case n < 11:
			cluster.RehashCoordinators()
			moves++
		default:
			w := c.workers[rng.IntN(len(c.workers))]
			w.kill()
			if err := w.run(); err != nil {
				t.Fatal(err)
			}
			kills++
		}
	}
	if active != nil {
		active.Remove()
	}
	sent := stopSending()
	t.Logf("broker faults: %d commands sent in %v; %d faults injected, %d leader/coordinator moves, %d kills", sent, duration, injected, moves, kills)
	c.check(sent)
	if n := c.selfExits(); n > 0 {
		t.Errorf("%d worker processes exited by themselves", n)
	}
}

// chaosDuration skips the test in -short mode and returns how long to
// disturb: def, or DECIDER_SOAK for the long form.
func chaosDuration(t *testing.T, def time.Duration) time.Duration {
	t.Helper()
	if testing.Short() {
		t.Skip("chaos needs real processes")
	}
	s := os.Getenv("DECIDER_SOAK")
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("DECIDER_SOAK=%q: %v", s, err)
	}
	return d
}

type chaos struct {
	t          *testing.T
	partitions int32
	bin        string
	dir        string
	addr       string
	kafka      []kgo.Opt
	app        *topology.App
	agg        *topology.Aggregate
	topics     topology.Topics
	mu         sync.Mutex
	workers    []*proc
	next       int // instance number of the next worker
}

const chaosSession = 1500 * time.Millisecond

// newChaos builds the binary, starts a broker process and creates the
// topics of app bank with the given partition count.
func newChaos(t *testing.T, partitions int32) *chaos {
	t.Helper()
	c := buildChaos(t, partitions)
	c.addr = freeAddr(t)
	broker := c.start("broker", "broker", "--listen", c.addr, "--data-dir", filepath.Join(c.dir, "broker"))
	t.Cleanup(broker.kill)
	deadline := time.Now().Add(20 * time.Second)
	for {
		conn, err := net.Dial("tcp", c.addr)
		if err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("broker did not listen: %v\n%s", err, broker.logTail())
		}
		time.Sleep(50 * time.Millisecond) // a port to open: nothing to wait on but the port
	}
	c.createTopics()
	return c
}

// newChaosInProcess is newChaos with a three-broker kfake cluster inside the
// test process, so that the test can inject broker faults.
func newChaosInProcess(t *testing.T, partitions int32) (*chaos, *kfake.Cluster) {
	t.Helper()
	c := buildChaos(t, partitions)
	cluster, err := kfake.NewCluster(kfake.NumBrokers(3), kfake.GroupMinSessionTimeout(500*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	c.addr = strings.Join(cluster.ListenAddrs(), ",")
	c.createTopics()
	return c, cluster
}

// buildChaos builds the binary; the broker is the caller's.
func buildChaos(t *testing.T, partitions int32) *chaos {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "decider")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	app, err := accounts.App(partitions)
	if err != nil {
		t.Fatal(err)
	}
	agg, _ := app.Aggregate(accounts.Name)
	c := &chaos{t: t, partitions: partitions, bin: bin, dir: dir, app: app, agg: agg, topics: app.Topics(agg)}
	t.Cleanup(func() {
		for _, w := range c.workers {
			w.kill()
		}
		if t.Failed() {
			c.keepLogs()
		}
	})
	return c
}

func (c *chaos) createTopics() {
	c.kafka = []kgo.Opt{kgo.SeedBrokers(strings.Split(c.addr, ",")...)}
	if err := ensureTopics(context.Background(), c.kafka, c.app); err != nil {
		c.t.Fatal(err)
	}
}

// proc is a child process of the test.
type proc struct {
	name   string
	args   []string
	env    []string
	bin    string
	log    string
	mu     sync.Mutex
	cmd    *exec.Cmd
	paused bool
	exits  int // exits not caused by the test
	done   chan struct{}
	killed bool
}

func (c *chaos) start(name string, args ...string) *proc {
	return c.startEnv(name, nil, args...)
}

// startEnv starts a child process with extra environment variables.
func (c *chaos) startEnv(name string, env []string, args ...string) *proc {
	p := &proc{name: name, args: args, env: env, bin: c.bin, log: filepath.Join(c.dir, name+".log")}
	if err := p.run(); err != nil {
		c.t.Fatal(err)
	}
	return p
}

func (p *proc) run() error {
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return err
	}
	done := make(chan struct{})
	p.mu.Lock()
	p.cmd, p.done, p.killed, p.paused = cmd, done, false, false
	p.mu.Unlock()
	go func() {
		cmd.Wait()
		f.Close()
		p.mu.Lock()
		if !p.killed {
			p.exits++
		}
		p.mu.Unlock()
		close(done)
	}()
	return nil
}

func (p *proc) signal(s syscall.Signal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s == syscall.SIGKILL || s == syscall.SIGTERM {
		p.killed = true
	}
	_ = p.cmd.Process.Signal(s)
}

// kill stops the process with SIGKILL and waits for it.
func (p *proc) kill() {
	p.signal(syscall.SIGKILL)
	<-p.done
}

// term stops the process with SIGTERM (graceful) and waits for it.
func (p *proc) term() {
	p.resume()
	p.signal(syscall.SIGTERM)
	<-p.done
}

func (p *proc) pause() {
	p.mu.Lock()
	p.paused = true
	p.mu.Unlock()
	p.signal(syscall.SIGSTOP)
}

func (p *proc) resume() {
	p.mu.Lock()
	paused := p.paused
	p.paused = false
	p.mu.Unlock()
	if paused {
		p.signal(syscall.SIGCONT)
	}
}

// keepLogs copies the child processes' logs to $DECIDER_CHAOS_LOGS, if set,
// for a look after a failure (the test's temp dir is removed).
func (c *chaos) keepLogs() {
	dst := os.Getenv("DECIDER_CHAOS_LOGS")
	if dst == "" {
		return
	}
	files, _ := filepath.Glob(filepath.Join(c.dir, "*.log"))
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil {
			_ = os.WriteFile(filepath.Join(dst, filepath.Base(f)), b, 0o644)
		}
	}
}

func (p *proc) logTail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func (c *chaos) startWorker() *proc {
	c.mu.Lock()
	defer c.mu.Unlock()
	name := fmt.Sprintf("w%d", c.next)
	c.next++
	w := c.start(name, c.workerArgs(name)...)
	c.workers = append(c.workers, w)
	return w
}

// workerArgs are the flags of worker name. Every other worker takes two
// commands a poll, so that its polls are full whenever it is behind (after
// a restart, a restore, a rebalance) and it decides each batch while the
// one before commits; the others run with the default of 10000. Every
// third worker (the crash test's first among them) has a state cache of 64
// KiB and checkpoints every 16 KiB of snapshots, so that it writes its
// cache back to the store all the time: evicting dirty snapshots (and
// writing through those too big for it), ending sweep rounds, and
// crashing with snapshots only in its cache; the others run with the
// defaults, where the store is written mostly when they stop.
func (c *chaos) workerArgs(name string) []string {
	args := []string{"run", "--brokers", c.addr, "--data-dir", filepath.Join(c.dir, name),
		"--partitions", strconv.Itoa(int(c.partitions)), "--instance", name,
		"--session-timeout", chaosSession.String(), "--transaction-timeout", "5s", "--rebalance-timeout", "5s", "--log-level", "info"}
	n, _ := strconv.Atoi(strings.TrimPrefix(name, "w"))
	if n%2 == 0 {
		args = append(args, "--max-poll-records", "2")
	}
	if n%3 == 0 {
		args = append(args, "--state-cache", "65536", "--checkpoint-bytes", "16384")
	}
	return args
}

// ensureWorkers restarts dead workers and starts new ones until n run.
func (c *chaos) ensureWorkers(n int) {
	for _, w := range c.workers {
		select {
		case <-w.done:
			if err := w.run(); err != nil {
				c.t.Fatal(err)
			}
		default:
		}
	}
	for len(c.workers) < n {
		c.startWorker()
	}
}

func (c *chaos) selfExits() int {
	n := 0
	for _, w := range c.workers {
		w.mu.Lock()
		if w.exits > 0 {
			c.t.Logf("worker %s exited by itself %d times; log tail:\n%s", w.name, w.exits, w.logTail())
		}
		n += w.exits
		w.mu.Unlock()
	}
	return n
}

type chaosStats struct{ kills, pauses, scales int }

// disturb kills, pauses and scales workers for d.
func (c *chaos) disturb(d time.Duration) chaosStats {
	var st chaosStats
	end := time.Now().Add(d)
	rng := rand.New(rand.NewPCG(1, 2))
	for step := 0; time.Now().Before(end); step++ {
		time.Sleep(time.Duration(400+rng.IntN(600)) * time.Millisecond) // the pace of the faults
		switch {
		case step == 1 || step == 2: // scale 1 → 3
			c.startWorker()
			st.scales++
		case step%7 == 6 && len(c.workers) > 1: // scale down by one, gracefully
			w := c.workers[len(c.workers)-1]
			w.term()
			c.workers = c.workers[:len(c.workers)-1]
			st.scales++
		case step%5 == 4: // a zombie: paused past its session timeout
			w := c.workers[rng.IntN(len(c.workers))]
			w.pause()
			time.Sleep(2 * chaosSession)
			w.resume()
			st.pauses++
		default: // kill -9 and restart
			w := c.workers[rng.IntN(len(c.workers))]
			w.kill()
			if err := w.run(); err != nil {
				c.t.Fatal(err)
			}
			st.kills++
		}
		if step%7 == 0 && len(c.workers) < 3 {
			c.startWorker()
			st.scales++
		}
	}
	return st
}

// send produces commands at rate per second over 40 accounts until the
// returned function is called, which returns how many were sent.
func (c *chaos) send(rate int) func() int {
	cl, err := kgo.NewClient(append(c.kafka, kgo.RecordPartitioner(kgo.ManualPartitioner()))...)
	if err != nil {
		c.t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan int)
	go func() {
		defer cl.Close()
		rng := rand.New(rand.NewPCG(3, 4))
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		var sent int
		recent := map[string][]*kgo.Record{}
		for {
			select {
			case <-stop:
				if err := cl.Flush(context.Background()); err != nil {
					c.t.Error(err)
				}
				done <- sent
				return
			case <-tick.C:
			}
			id := fmt.Sprintf("acc-%d", rng.IntN(40))
			var r *kgo.Record
			if rs := recent[id]; len(rs) > 0 && rng.IntN(20) == 0 {
				r = rs[rng.IntN(len(rs))] // a caller's retry: same command id
				r = &kgo.Record{Topic: r.Topic, Partition: r.Partition, Key: r.Key, Value: r.Value, Headers: r.Headers}
			} else {
				r = c.record(id, fmt.Sprintf("c%d", sent), chaosCommand(rng, len(recent[id]) == 0))
				recent[id] = append(recent[id], r)
				if len(recent[id]) > 10 {
					recent[id] = recent[id][1:]
				}
			}
			sent++
			cl.Produce(context.Background(), r, func(_ *kgo.Record, err error) {
				if err != nil {
					c.t.Errorf("produce: %v", err)
				}
			})
		}
	}()
	return func() int {
		close(stop)
		return <-done
	}
}

func chaosCommand(rng *rand.Rand, first bool) accounts.Command {
	switch n := rng.IntN(20); {
	case first || n == 0:
		return accounts.OpenAccount{Owner: "o"}
	case n < 10:
		return accounts.Deposit{Amount: int64(1 + rng.IntN(100))}
	case n < 19:
		return accounts.Withdraw{Amount: int64(1 + rng.IntN(120))}
	default:
		return accounts.CloseAccount{}
	}
}

func (c *chaos) record(id, cmdID string, cmd any) *kgo.Record {
	typ, payload, err := c.agg.Schemas().Encode(cmd)
	if err != nil {
		c.t.Fatal(err)
	}
	h := func(k, v string) kgo.RecordHeader { return kgo.RecordHeader{Key: k, Value: []byte(v)} }
	return &kgo.Record{
		Topic: c.topics.Commands, Partition: topology.Partition([]byte(id), c.partitions), Key: []byte(id), Value: payload,
		Headers: []kgo.RecordHeader{
			h(schemas.HeaderSpecVersion, "1.0"), h(schemas.HeaderID, cmdID), h(schemas.HeaderType, typ),
			h(schemas.HeaderSource, "chaos"), h(schemas.HeaderReplyTo, c.topics.Replies),
		},
	}
}

// logGroup logs what the broker says of the app's consumer group: its
// state and each member's assignment (for a drain that stalls).
func (c *chaos) logGroup() {
	cl, err := kgo.NewClient(c.kafka...)
	if err != nil {
		c.t.Logf("describe group: %v", err)
		return
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	groups, err := kadm.NewClient(cl).DescribeGroups(ctx, c.app.Group())
	if err != nil {
		c.t.Logf("describe group: %v", err)
		return
	}
	for _, g := range groups.Sorted() {
		c.t.Logf("group %s: state %s, protocol %s, %d members, err %v", g.Group, g.State, g.Protocol, len(g.Members), g.Err)
		for _, m := range g.Members {
			assigned, _ := m.Assigned.AsConsumer()
			c.t.Logf("  member %s (%s %s): assigned %v", m.MemberID, m.ClientID, m.ClientHost, assigned)
		}
	}
}

// readTopic reads every committed record of topic, waiting until it holds at
// least min records (or failing after a minute).
func (c *chaos) readTopic(topic string, min int) []*kgo.Record {
	c.t.Helper()
	cl, err := kgo.NewClient(append(c.kafka, kgo.ConsumeTopics(topic), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))...)
	if err != nil {
		c.t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var out []*kgo.Record
	for len(out) < min {
		f := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			for _, w := range c.workers {
				c.t.Logf("log tail of %s:\n%s", w.name, w.logTail())
			}
			c.logGroup()
			c.t.Fatalf("%s holds %d records after 90s, want %d", topic, len(out), min)
		}
		out = append(out, f.Records()...)
	}
	// Then whatever else is there now: more records than wanted is a finding.
	adm := kadm.NewClient(cl)
	ends, err := adm.ListEndOffsets(context.Background(), topic)
	if err != nil {
		c.t.Fatal(err)
	}
	seen := map[int32]int64{}
	for _, r := range out {
		seen[r.Partition] = max(seen[r.Partition], r.Offset+1)
	}
	for {
		behind := false
		ends.Each(func(o kadm.ListedOffset) {
			if seen[o.Partition] < o.Offset-1 { // the last offset may be a marker
				behind = true
			}
		})
		if !behind {
			return out
		}
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		f := cl.PollFetches(pctx)
		cancel()
		if f.NumRecords() == 0 {
			return out
		}
		for _, r := range f.Records() {
			seen[r.Partition] = max(seen[r.Partition], r.Offset+1)
			out = append(out, r)
		}
	}
}

// check compares every reply and event with the reference model.
func (c *chaos) check(sent int) {
	t := c.t
	commands := c.readTopic(c.topics.Commands, sent)
	replies := c.readTopic(c.topics.Replies, sent)
	events := c.readTopic(c.topics.Events, 0)

	// The model, in partition order (each aggregate lives in one partition).
	byPartition := map[int32][]*kgo.Record{}
	for _, r := range commands {
		byPartition[r.Partition] = append(byPartition[r.Partition], r)
	}
	type agg struct {
		state   accounts.Account
		version int64
		events  []any
	}
	aggs := map[string]*agg{}
	want := map[string]schemas.Reply{}
	for _, rs := range byPartition {
		for _, r := range rs {
			id, cmdID := string(r.Key), hdr(r, schemas.HeaderID)
			a := aggs[id]
			if a == nil {
				a = &agg{}
				aggs[id] = a
			}
			if _, dup := want[cmdID]; dup {
				continue // a retry: the first reply again, nothing written
			}
			cmd, err := c.agg.DecodeCommand(hdr(r, schemas.HeaderType), r.Value)
			if err != nil {
				t.Fatal(err)
			}
			rep := schemas.Reply{CommandID: cmdID, AggregateID: id, Status: schemas.Accepted}
			evs, err := accounts.Decide(a.state, cmd.(accounts.Command))
			var rej topology.Rejection
			if errors.As(err, &rej) {
				rep.Status, rep.Reason = schemas.Rejected, string(rej)
			}
			for _, e := range evs {
				a.state = accounts.Evolve(a.state, e)
				a.events = append(a.events, e)
			}
			a.version += int64(len(evs))
			rep.Version, rep.Events = a.version, int32(len(evs))
			want[cmdID] = rep
		}
	}
	perCommand := map[string]int{}
	for _, r := range commands {
		perCommand[hdr(r, schemas.HeaderID)]++
	}
	got := map[string]int{}
	wrong := 0
	for _, r := range replies {
		v, err := c.agg.Schemas().Decode(schemas.ReplyName, r.Value)
		if err != nil {
			t.Fatal(err)
		}
		rep := v.(schemas.Reply)
		got[rep.CommandID]++
		if rep != want[rep.CommandID] {
			wrong++
			if wrong <= 10 {
				t.Errorf("reply %+v, the model says %+v", rep, want[rep.CommandID])
			}
		}
	}
	lost, dup := 0, 0
	for id, n := range perCommand {
		switch {
		case got[id] < n:
			lost++
		case got[id] > n:
			dup++
		}
	}
	gaps := 0
	eventsOf := map[string][]any{}
	for _, r := range events {
		id := string(r.Key)
		v, _ := strconv.Atoi(hdr(r, schemas.HeaderAggregateVersion))
		if v != len(eventsOf[id])+1 {
			gaps++
		}
		e, err := c.agg.DecodeEvent(hdr(r, schemas.HeaderType), r.Value)
		if err != nil {
			t.Fatal(err)
		}
		eventsOf[id] = append(eventsOf[id], e)
	}
	wrongBalances := 0
	for id, a := range aggs {
		var st accounts.Account
		for _, e := range eventsOf[id] {
			st = accounts.Evolve(st, e.(accounts.Event))
		}
		if st != a.state || len(eventsOf[id]) != len(a.events) {
			wrongBalances++
			t.Errorf("%s: events fold to %+v (%d events), the model says %+v (%d)", id, st, len(eventsOf[id]), a.state, len(a.events))
		}
	}
	t.Logf("chaos: %d commands, %d replies, %d events, %d aggregates: %d lost, %d duplicated, %d wrong replies, %d event gaps, %d wrong balances",
		len(commands), len(replies), len(events), len(aggs), lost, dup, wrong, gaps, wrongBalances)
	// And the operators' checker, over the same topics.
	rep, err := verify(context.Background(), c.kafka, c.app, io.Discard)
	if err != nil || rep.Pending != 0 {
		var out strings.Builder
		rep.print(&out)
		t.Errorf("decider verify: %v (%d pending)\n%s", err, rep.Pending, out.String())
	}
	if lost+dup+wrong+gaps+wrongBalances > 0 {
		for _, w := range c.workers {
			t.Logf("log tail of %s:\n%s", w.name, w.logTail())
		}
		t.Fatal("the invariants do not hold")
	}
}

func hdr(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}
