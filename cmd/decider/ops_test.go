package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/deciderhq/decider/examples/accounts"
	"github.com/deciderhq/decider/schemas"
	"github.com/deciderhq/decider/statestore"
	"github.com/deciderhq/decider/topology"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// worker creates the topics of app bank (4 partitions) if they are missing
// and runs `decider run` against the broker at addr with its data in dir,
// until the returned stop is called; stop waits until it left the group.
func worker(t *testing.T, addr, dir string) (stop func()) {
	t.Helper()
	if out, err := decider(context.Background(), "topics", "create", "--brokers", addr, "--partitions", "4"); err != nil {
		t.Fatalf("topics create: %v\n%s", err, out)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- dispatch(ctx, []string{"run", "--brokers", addr, "--data-dir", dir, "--partitions", "4", "--log-level", "warn",
			"--session-timeout", "2s", "--transaction-timeout", "5s"}, io.Discard)
	}()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

// tailLines runs decider tail with args and returns the lines it printed.
func tailLines(t *testing.T, ctx context.Context, addr string, args ...string) []tailRecord {
	t.Helper()
	out, err := decider(ctx, append([]string{"tail"}, append(args, "--brokers", addr)...)...)
	if err != nil {
		t.Fatalf("tail %v: %v\n%s", args, err, out)
	}
	return parseTail(t, out)
}

func parseTail(t *testing.T, out string) []tailRecord {
	t.Helper()
	var lines []tailRecord
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l == "" {
			continue
		}
		var r tailRecord
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("tail printed %q: %v", l, err)
		}
		lines = append(lines, r)
	}
	return lines
}

// field returns a top-level field of a JSON object.
func field(t *testing.T, obj json.RawMessage, path ...string) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(obj, &v); err != nil {
		t.Fatalf("%s: %v", obj, err)
	}
	for _, k := range path {
		m, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("%s has no %v", obj, path)
		}
		v = m[k]
	}
	return v
}

// tail prints events, replies, snapshots and dead letters decoded, keeps
// one aggregate's records with --id, starts at the end with --from end,
// and goes on with --follow; inspect prints the latest snapshot, and with
// --data-dir the local store's copy, agreeing.
func TestTailAndInspect(t *testing.T) {
	addr, dir := cluster(t), t.TempDir()
	stop := worker(t, addr, dir)
	send(t, addr, "--id", "acc-1", "--type", "OpenAccount", "--data", `{"owner":"ada"}`)
	send(t, addr, "--id", "acc-1", "--type", "Deposit", "--data", `{"amount":100}`, "--command-id", "dep-1")
	send(t, addr, "--id", "acc-2", "--type", "OpenAccount", "--data", `{"owner":"bob"}`)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	events := tailLines(t, ctx, addr, "events")
	if len(events) != 3 {
		t.Fatalf("tail events: %d lines, want 3: %+v", len(events), events)
	}
	var deposit *tailRecord
	for i, e := range events {
		if e.Headers[schemas.HeaderType] == accounts.Namespace+".Deposited" {
			deposit = &events[i]
		}
	}
	if deposit == nil || deposit.Key != "acc-1" || deposit.Topic != "bank.account.events" || deposit.Headers[schemas.HeaderAggregateVersion] != "2" ||
		field(t, deposit.Value, "amount") != 100.0 || field(t, deposit.Value, "balance") != 100.0 || deposit.Error != "" || deposit.Timestamp.IsZero() {
		t.Fatalf("tail events: the deposit is %+v (value %s)", deposit, deposit.Value)
	}
	if got := tailLines(t, ctx, addr, "events", "--id", "acc-1"); len(got) != 2 || got[0].Key != "acc-1" || got[1].Key != "acc-1" {
		t.Errorf("tail events --id acc-1: %+v", got)
	}
	replies := tailLines(t, ctx, addr, "replies", "--id", "acc-1")
	if len(replies) != 2 || field(t, replies[1].Value, "aggregateId") != "acc-1" || field(t, replies[1].Value, "status") != "ACCEPTED" {
		t.Errorf("tail replies --id acc-1: %+v", replies)
	}
	snaps := tailLines(t, ctx, addr, "snapshots", "--id", "acc-1")
	if len(snaps) != 2 || field(t, snaps[1].Value, "version") != 2.0 || field(t, snaps[1].Value, "state", "balance") != 100.0 {
		t.Errorf("tail snapshots --id acc-1: %+v", snaps)
	}
	if got := tailLines(t, ctx, addr, "commands", "--from", "end"); len(got) != 0 {
		t.Errorf("tail commands --from end: %+v, want nothing", got)
	}

	// A command with a payload that does not decode: a dead letter, its
	// value printed in base64 with the reason.
	agg, err := accounts.Aggregate(4)
	if err != nil {
		t.Fatal(err)
	}
	topics := topology.TopicsOf("bank", accounts.Name)
	bad := verifyCommand(t, agg, topics, "acc-2", "bad-1", accounts.Deposit{Amount: 1}, topics.Replies)
	bad.Value = []byte("junk")
	kafka := []kgo.Opt{kgo.SeedBrokers(addr)}
	producer, err := kgo.NewClient(append(kafka, kgo.RecordPartitioner(kgo.ManualPartitioner()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	if err := producer.ProduceSync(ctx, bad).FirstErr(); err != nil {
		t.Fatal(err)
	}
	waitRecord(t, ctx, kafka, topics.Replies, func(r *kgo.Record) bool { return string(r.Key) == "bad-1" })
	dlq := tailLines(t, ctx, addr, "dlq")
	if len(dlq) != 1 || dlq[0].Error == "" || dlq[0].Headers[schemas.HeaderDLQReason] == "" || field(t, dlq[0].Value) != base64.StdEncoding.EncodeToString([]byte("junk")) {
		t.Errorf("tail dlq: %+v", dlq)
	}

	// --follow prints what is there, then what comes, until interrupted.
	fctx, fcancel := context.WithCancel(ctx)
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- dispatch(fctx, []string{"tail", "events", "--brokers", addr, "--id", "acc-1", "--follow"}, pw)
		pw.Close()
	}()
	lines := bufio.NewScanner(pr)
	for range 2 {
		if !lines.Scan() {
			t.Fatalf("tail --follow stopped: %v", <-done)
		}
	}
	send(t, addr, "--id", "acc-1", "--type", "Withdraw", "--data", `{"amount":30}`)
	if !lines.Scan() {
		t.Fatalf("tail --follow stopped: %v", <-done)
	}
	followed := parseTail(t, lines.Text())
	fcancel()
	go io.Copy(io.Discard, pr)
	if err := <-done; err != nil || len(followed) != 1 || field(t, followed[0].Value, "amount") != 30.0 || field(t, followed[0].Value, "balance") != 70.0 {
		t.Fatalf("tail --follow: %+v, then %v", followed, err)
	}

	out, err := decider(ctx, "inspect", "--brokers", addr, "--id", "acc-1")
	if err != nil {
		t.Fatalf("inspect: %v\n%s", err, out)
	}
	var got struct {
		Aggregate, ID, Topic string
		Partition            int32
		Version              int64
		CommandOffset        int64
		State                accounts.Account
		Recent               []schemas.Reply
		Local                *localSnapshot
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("inspect printed %s: %v", out, err)
	}
	if got.Version != 3 || got.State.Balance != 70 || got.State.Owner != "ada" || got.CommandOffset < 2 || len(got.Recent) != 3 ||
		got.Recent[1].CommandID != "dep-1" || got.Partition != topology.Partition([]byte("acc-1"), 4) || got.Local != nil {
		t.Errorf("inspect printed %s", out)
	}
	if _, err := decider(ctx, "inspect", "--brokers", addr, "--id", "nobody"); err == nil || !strings.Contains(err.Error(), `no snapshot of account "nobody"`) {
		t.Errorf("inspect of an aggregate without snapshot: %v", err)
	}

	stop()
	out, err = decider(ctx, "inspect", "--brokers", addr, "--id", "acc-1", "--data-dir", dir)
	if err != nil {
		t.Fatalf("inspect --data-dir: %v\n%s", err, out)
	}
	got.Local = nil
	if err := json.Unmarshal([]byte(out), &got); err != nil || got.Local == nil || !got.Local.Found || !got.Local.Agrees || got.Local.Behind ||
		got.Local.Snapshot == nil || got.Local.Snapshot.Version != 3 {
		t.Errorf("inspect --data-dir printed %s (%v)", out, err)
	}
}

// rebuild refuses while a worker runs; after a snapshot was overwritten
// with a wrong state (and restored into a worker's store, as a bug in
// Evolve would have it), a dry run counts it and writes nothing, and
// rebuild --yes writes the fold of the events with the command offset and
// dedupe window kept; the worker's store restores it: the balance the
// worker decides on is right again.
func TestRebuild(t *testing.T) {
	addr, dir := cluster(t), t.TempDir()
	kafka := []kgo.Opt{kgo.SeedBrokers(addr)}
	stop := worker(t, addr, dir)
	openTwoAccounts(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if _, err := decider(ctx, "rebuild", "snapshots", "--brokers", addr, "--yes"); !errors.Is(err, errActiveMembers) || !strings.Contains(err.Error(), "stop every worker") {
		t.Fatalf("rebuild with a worker running: %v, want a refusal", err)
	}
	if out, err := decider(ctx, "rebuild", "snapshots", "--brokers", addr); err != nil || !strings.HasPrefix(out, "warning: the consumer group has active members") ||
		!strings.Contains(out, "0 snapshots differ from the fold") {
		t.Fatalf("rebuild dry run with a worker running: %v\n%s", err, out)
	}
	stop()

	app, err := accounts.App(4)
	if err != nil {
		t.Fatal(err)
	}
	agg, _ := app.Aggregate(accounts.Name)
	topics := app.Topics(agg)
	cl, err := connect(ctx, kafka)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	latest := func(id string) (*kgo.Record, schemas.Snapshot, accounts.Account) {
		t.Helper()
		r, err := latestSnapshot(ctx, kafka, adm, topics.Snapshots, topology.Partition([]byte(id), 4), id)
		if err != nil || r == nil {
			t.Fatalf("latest snapshot of %s: %v, %v", id, r, err)
		}
		d, err := agg.Schemas().Decode(schemas.SnapshotName, r.Value)
		if err != nil {
			t.Fatal(err)
		}
		s := d.(schemas.Snapshot)
		st, err := agg.DecodeState(s.State)
		if err != nil {
			t.Fatal(err)
		}
		return r, s, st.(accounts.Account)
	}
	before, good, _ := latest("acc-1")
	acc2, _, _ := latest("acc-2")
	forged := good
	if forged.State, err = agg.EncodeState(accounts.Account{Opened: true, Owner: "ada", Balance: 999}); err != nil {
		t.Fatal(err)
	}
	_, value, err := agg.Schemas().Encode(forged)
	if err != nil {
		t.Fatal(err)
	}
	p := before.Partition
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topics.Snapshots, Partition: p, Key: []byte("acc-1"), Value: value}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	store, err := statestore.Open(filepath.Join(dir, "state"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Restore(ctx, statestore.Changelog{Topic: topics.Snapshots, Kafka: kafka}, accounts.Name, p); err != nil {
		t.Fatal(err)
	}
	store.Close()
	if rep, err := verify(ctx, kafka, app, nil); rep.count(classSnapshot) != 1 {
		t.Fatalf("verify after the forgery: %v, %+v; want one snapshot violation", err, rep.Violations)
	}

	out, err := decider(ctx, "rebuild", "snapshots", "--brokers", addr)
	if err != nil || !strings.Contains(out, "rebuild bank/account: 4 partitions, 3 events, 2 aggregates, 1 snapshots differ from the fold") ||
		!strings.Contains(out, "dry run: nothing written") {
		t.Fatalf("rebuild dry run: %v\n%s", err, out)
	}
	if r, _, st := latest("acc-1"); r.Offset <= before.Offset || st.Balance != 999 {
		t.Fatalf("the dry run wrote: %+v", st)
	}
	out, err = decider(ctx, "rebuild", "snapshots", "--brokers", addr, "--yes")
	if err != nil || !strings.Contains(out, "1 snapshots differ from the fold (1 written)") || strings.Count(out, "(0 written)") != 3 {
		t.Fatalf("rebuild: %v\n%s", err, out)
	}
	r, s, st := latest("acc-1")
	if st != (accounts.Account{Opened: true, Owner: "ada", Balance: 100}) || s.Version != 2 || s.CommandOffset != good.CommandOffset ||
		len(s.Recent) != 2 || s.Recent[1] != good.Recent[1] || r.Offset <= before.Offset {
		t.Fatalf("rebuilt snapshot of acc-1 at %d: %+v, state %+v; want the fold, balance 100, with %+v's command offset and window", r.Offset, s, st, good)
	}
	if r, _, _ := latest("acc-2"); r.Offset != acc2.Offset {
		t.Errorf("acc-2's snapshot, equal to its fold, was rewritten")
	}
	if rep, err := verify(ctx, kafka, app, nil); err != nil {
		t.Fatalf("verify after the rebuild: %v, %+v", err, rep.Violations)
	}

	worker(t, addr, dir)
	if rep := send(t, addr, "--id", "acc-1", "--type", "Withdraw", "--data", `{"amount":500}`); rep.Status != schemas.Rejected || rep.Reason != "insufficient_funds" || rep.Version != 2 {
		t.Fatalf("withdraw 500 after the rebuild: %+v; the worker's store must hold the rebuilt balance of 100, not 999", rep)
	}

	// A snapshot that counts more events than the topic holds (events
	// missing): the rebuild refuses rather than lower the version.
	r2, ahead, _ := latest("acc-2")
	ahead.Version = 5
	if _, value, err = agg.Schemas().Encode(ahead); err != nil {
		t.Fatal(err)
	}
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topics.Snapshots, Partition: r2.Partition, Key: []byte("acc-2"), Value: value}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	if out, err := decider(ctx, "rebuild", "snapshots", "--brokers", addr); err == nil || !strings.Contains(err.Error(), "acc-2 has 1 events") {
		t.Fatalf("rebuild with events missing: %v\n%s; want a refusal naming acc-2", err, out)
	}
}

// reset --dry-run prints the offsets and changes nothing; reset refuses
// while a worker runs, then moves the group's offsets to the beginning (and
// drops a local store); the worker reads every command again and decides
// none of them twice.
func TestReset(t *testing.T) {
	addr, dir := cluster(t), t.TempDir()
	stop := worker(t, addr, dir)
	openTwoAccounts(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if _, err := decider(ctx, "reset", "--brokers", addr, "--to", "beginning"); !errors.Is(err, errActiveMembers) {
		t.Fatalf("reset with a worker running: %v, want a refusal", err)
	}
	if out, err := decider(ctx, "reset", "--brokers", addr, "--to", "beginning", "--dry-run"); err != nil || !strings.HasPrefix(out, "warning: the consumer group has active members") {
		t.Fatalf("reset --dry-run with a worker running: %v\n%s", err, out)
	}
	stop()

	cl, err := connect(ctx, []kgo.Opt{kgo.SeedBrokers(addr)})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	committed := func() map[int32]int64 {
		t.Helper()
		offs, err := adm.FetchOffsets(ctx, "bank")
		if err != nil {
			t.Fatal(err)
		}
		m := map[int32]int64{}
		offs.Each(func(o kadm.OffsetResponse) { m[o.Partition] = o.At })
		return m
	}
	p1, p2 := topology.Partition([]byte("acc-1"), 4), topology.Partition([]byte("acc-2"), 4)
	was := committed()
	if was[p1] != 2 || (p1 != p2 && was[p2] != 1) {
		t.Fatalf("committed offsets %v, want 2 on partition %d (acc-1) and 1 on %d (acc-2)", was, p1, p2)
	}

	out, err := decider(ctx, "reset", "--brokers", addr, "--to", "beginning", "--dry-run", "--data-dir", dir)
	if err != nil || !strings.Contains(out, "  bank.account.commands/"+strconv.Itoa(int(p1))+": 2 → 0\n") || !strings.Contains(out, "dry run: nothing changed") {
		t.Fatalf("reset --dry-run: %v\n%s", err, out)
	}
	if now := committed(); now[p1] != 2 {
		t.Fatalf("the dry run moved the offsets: %v", now)
	}
	if out, err := decider(ctx, "reset", "--brokers", addr, "--to", time.Now().Add(time.Hour).Format(time.RFC3339), "--dry-run"); err != nil ||
		!strings.Contains(out, "  bank.account.commands/"+strconv.Itoa(int(p1))+": 2 → 2\n") {
		t.Errorf("reset --to a time after every command: %v\n%s", err, out)
	}
	if _, err := decider(ctx, "reset", "--brokers", addr, "--to", "yesterday"); err == nil || !strings.Contains(err.Error(), "RFC 3339") {
		t.Errorf("reset --to yesterday: %v", err)
	}

	out, err = decider(ctx, "reset", "--brokers", addr, "--to", "beginning", "--data-dir", dir)
	if err != nil || !strings.Contains(out, "committed") || !strings.Contains(out, "dropped the local store of account's 4 partitions") {
		t.Fatalf("reset: %v\n%s", err, out)
	}
	if now := committed(); now[p1] != 0 || now[p2] != 0 {
		t.Fatalf("offsets after the reset: %v, want 0", now)
	}
	store, err := statestore.Open(filepath.Join(dir, "state"), nil)
	if err != nil {
		t.Fatal(err)
	}
	n, err := store.Count(accounts.Name, p1)
	store.Close()
	if err != nil || n != 0 {
		t.Fatalf("local store after the reset: %d snapshots in partition %d, %v", n, p1, err)
	}

	worker(t, addr, dir)
	if rep := send(t, addr, "--id", "acc-1", "--type", "Deposit", "--data", `{"amount":1}`); rep.Status != schemas.Accepted || rep.Version != 3 {
		t.Fatalf("deposit after the reset: %+v, want version 3 (the replayed commands skipped)", rep)
	}
	if rep := send(t, addr, "--id", "acc-2", "--type", "Deposit", "--data", `{"amount":1}`); rep.Status != schemas.Accepted || rep.Version != 2 {
		t.Fatalf("deposit after the reset: %+v, want version 2", rep)
	}
	if ev, rep := tailLines(t, ctx, addr, "events"), tailLines(t, ctx, addr, "replies"); len(ev) != 5 || len(rep) != 5 {
		t.Fatalf("after the replay: %d events and %d replies, want 5 and 5 (3 commands before, 2 after)", len(ev), len(rep))
	}
}

// Every command's --help shows its examples and its flags with their
// environment variables, the Kafka connection flags where it talks to
// Kafka; a command with an action (topics create) takes --help after it too.
func TestHelp(t *testing.T) {
	kafka := map[string]bool{"send": true, "run": true, "verify": true, "topics": true, "tail": true, "inspect": true, "rebuild": true, "reset": true}
	actions := map[string]string{"topics": "create", "tail": "events", "rebuild": "snapshots"}
	for name := range commands() {
		args := [][]string{{name, "--help"}}
		if a, ok := actions[name]; ok {
			args = append(args, []string{name, a, "--help"})
		}
		for _, a := range args {
			var err error
			help := stderrOf(t, func() { err = dispatch(context.Background(), a, io.Discard) })
			if !errors.Is(err, flag.ErrHelp) {
				t.Errorf("decider %v: %v, want flag.ErrHelp", a, err)
			}
			want := []string{"decider " + name + ": ", "\nExamples:\n  ", "DECIDER_<FLAG>"}
			if kafka[name] {
				want = append(want, "-brokers", "-tls-ca", "-tls-cert", "-sasl-mechanism", "-sasl-password")
			}
			for _, w := range want {
				if !strings.Contains(help, w) {
					t.Errorf("decider %v does not say %q:\n%s", a, w, help)
				}
			}
		}
	}
}

// stderrOf returns what fn wrote to os.Stderr.
func stderrOf(t *testing.T, fn func()) string {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "stderr")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	old := os.Stderr
	os.Stderr = f
	fn()
	os.Stderr = old
	b, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The progress of rebuild: a bar redrawn in place on a terminal, a line
// per step elsewhere.
func TestProgress(t *testing.T) {
	var plain strings.Builder
	p := newProgress(&plain, "rebuild bank/account", 2)
	p.detail("partition 0: 65536 records read")
	p.step("partition 0: done")
	p.step("partition 1: done")
	p.end()
	if plain.String() != "partition 0: done\npartition 1: done\n" {
		t.Errorf("not a terminal: %q", plain.String())
	}
	var tty strings.Builder
	p = &progress{w: &tty, tty: true, label: "rebuild", total: 2}
	p.step("partition 0: done")
	p.detail("partition 1: 65536 records read")
	p.end()
	want := "\r\033[Krebuild [###############               ] 1/2 " +
		"\r\033[Krebuild [###############               ] 1/2 partition 1: 65536 records read\n"
	if tty.String() != want {
		t.Errorf("terminal: %q\nwant %q", tty.String(), want)
	}
}

// openTwoAccounts opens acc-1 with a balance of 100 and acc-2.
func openTwoAccounts(t *testing.T, addr string) {
	t.Helper()
	send(t, addr, "--id", "acc-1", "--type", "OpenAccount", "--data", `{"owner":"ada"}`)
	send(t, addr, "--id", "acc-1", "--type", "Deposit", "--data", `{"amount":100}`)
	send(t, addr, "--id", "acc-2", "--type", "OpenAccount", "--data", `{"owner":"bob"}`)
}
