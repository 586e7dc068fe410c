package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/deciderhq/decider/examples/accounts"
	"github.com/deciderhq/decider/processor"
	"github.com/deciderhq/decider/schemas"
	"github.com/deciderhq/decider/statestore"
	"github.com/deciderhq/decider/topology"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

const benchUsage = `Measures decider against the reference on one broker, in one run, and
prints every figure next to its ratio to the reference's:

 1. flat out: --commands commands over --accounts accounts (opens, then
    deposits and withdrawals) are preloaded; commands/s is measured from
    the moment the group has assigned every partition to the commit of the
    last reply, for the reference (the bare transaction loop: one input →
    event + snapshot + reply, one transaction per poll, no domain, no
    store) and for a decider worker of the example domain with its state
    store on a temp dir. Joining the group is reported apart (startup).
 2. latency: an open-loop sender offers commands at each of --loads per
    second for --duration, and a reader of the replies topic measures
    send → reply (p50, p99, p999), for both.
 3. restore: --restore-aggregates snapshots in the changelog are restored
    into an empty store, every partition in parallel as a worker does.
 4. peak RSS of this process in each phase (VmHWM, reset between phases),
    and the state store's size on disk.

The broker is a "decider broker" child process by default (it does not
share this process's memory and garbage collector with what is measured),
or --broker embedded, or a cluster with --brokers (topics named
bench-<run>-… are created and deleted again).

Examples:
  decider bench
  decider bench --accounts 1000000 --json
  decider bench --quick --broker embedded
  decider bench --cpuprofile /tmp/bench   # /tmp/bench.{decider,reference,restore}.pprof
`

// quickFlags are --quick's sizes, for the flags not given otherwise.
var quickFlags = map[string]string{
	"partitions": "4", "accounts": "300", "loads": "1000,10000",
	"duration": "500ms", "restore-aggregates": "2000",
}

// bench is one run of `decider bench`.
type bench struct {
	kafka      []kgo.Opt
	adm        *kadm.Client
	run        string // names the run's apps: bench-<run>-decider, …
	dir        string // temp dir of the state stores
	partitions int32
	commands   int
	accounts   int
	loads      []int
	duration   time.Duration
	restoreN   int
	cpuprofile string
	brokerPID  int // of a broker child process; 0 for none
	log        *slog.Logger
	progress   io.Writer
}

func runBench(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("bench")
	brokers := fs.String("brokers", "", "seed brokers of a cluster to measure on (default: start a broker, see --broker)")
	brokerKind := fs.String("broker", "process", `broker to start without --brokers: "process" (a decider broker child process) or "embedded" (in this process)`)
	partitions := fs.Int("partitions", int(topology.DefaultPartitions), "partitions of the commands topics")
	commands := fs.Int("commands", 0, "commands preloaded for the flat-out run (default 3 × --accounts: an open and two deposits or withdrawals per account)")
	accts := fs.Int("accounts", 100000, "accounts the commands go to (the first --accounts commands open them)")
	loads := fs.String("loads", "1000,10000,50000", "offered loads of the latency runs, commands per second, comma-separated")
	duration := fs.Duration("duration", 10*time.Second, "length of each latency run")
	restoreN := fs.Int("restore-aggregates", 1000000, "snapshots in the changelog of the restore run")
	cpuprofile := fs.String("cpuprofile", "", "write CPU profiles of the flat-out runs and the restore to `prefix`.decider.pprof, prefix.reference.pprof and prefix.restore.pprof")
	asJSON := fs.Bool("json", false, "print one JSON object instead of the table")
	quick := fs.Bool("quick", false, "small sizes, for a smoke test: "+fmt.Sprint(quickFlags))
	if err := parse(fs, args); err != nil {
		return err
	}
	if *quick {
		given := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
		for name, v := range quickFlags {
			if _, inEnv := os.LookupEnv(envName(name)); !given[name] && !inEnv {
				_ = fs.Set(name, v) // the values are valid
			}
		}
	}
	b := &bench{
		partitions: int32(*partitions), commands: *commands, accounts: *accts, duration: *duration,
		restoreN: *restoreN, cpuprofile: *cpuprofile, progress: os.Stderr,
		log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	for _, s := range strings.Split(*loads, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			return fmt.Errorf("--loads %q: %q is not a positive number", *loads, s)
		}
		b.loads = append(b.loads, n)
	}
	if b.commands == 0 {
		b.commands = 3 * b.accounts
	}
	switch {
	case b.partitions <= 0 || b.commands <= 0 || b.accounts <= 0 || b.restoreN <= 0:
		return errors.New("--partitions, --commands, --accounts and --restore-aggregates must be positive")
	case b.duration <= 0:
		return errors.New("--duration must be positive")
	}
	var r [3]byte
	_, _ = rand.Read(r[:])
	b.run = hex.EncodeToString(r[:])
	dir, err := os.MkdirTemp("", "decider-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	b.dir = dir

	res := benchResult{Machine: thisMachine(), Partitions: b.partitions, Commands: b.commands, Accounts: b.accounts, Duration: b.duration.String()}
	seeds := splitBrokers(*brokers)
	res.Broker = "cluster " + *brokers
	stopBroker := func() (int64, error) { return 0, nil }
	if len(seeds) == 0 {
		res.Broker = *brokerKind + " (kfake)"
		if seeds, b.brokerPID, stopBroker, err = startBenchBroker(ctx, *brokerKind, dir); err != nil {
			return err
		}
	}
	b.kafka = []kgo.Opt{kgo.SeedBrokers(seeds...)}
	err = b.measureAll(ctx, &res, len(*brokers) > 0)
	peak, serr := stopBroker()
	if err = errors.Join(err, serr); err != nil {
		return err
	}
	res.BrokerPeakRSS = peak
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res.summary())
	}
	res.table(stdout)
	return nil
}

// measureAll runs every phase: flat out and latency of the reference, then
// of decider, then restore. Both systems' commands are preloaded first, so
// that both run on a broker holding the same data. With cleanUp, the run's
// topics are deleted at the end.
func (b *bench) measureAll(ctx context.Context, res *benchResult, cleanUp bool) error {
	admin, err := kgo.NewClient(b.kafka...)
	if err != nil {
		return err
	}
	defer admin.Close()
	b.adm = kadm.NewClient(admin)
	if cleanUp {
		defer b.deleteTopics()
	}
	agg, err := accounts.Aggregate(b.partitions)
	if err != nil {
		return err
	}
	systems := []struct {
		name string
		run  func(ctx context.Context, app *topology.App) (int64, error)
		out  *systemResult
	}{
		{"reference", b.runReference, &res.Reference},
		{"decider", b.runDecider, &res.Decider},
	}
	apps := make([]*topology.App, len(systems))
	for i, s := range systems {
		if apps[i], err = b.app(ctx, s.name, agg); err != nil {
			return err
		}
		b.say("preloading %d commands over %d accounts for %s", b.commands, b.accounts, s.name)
		if err := preload(ctx, b.kafka, newWorkload(agg, apps[i].Topics(agg), b.accounts, 1), b.commands); err != nil {
			return fmt.Errorf("preload %s: %w", s.name, err)
		}
	}
	for i, s := range systems {
		if *s.out, err = b.measure(ctx, s.name, s.run, apps[i], agg); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	res.Restore, err = b.measureRestore(ctx, agg)
	return err
}

// app creates the topics of the run's app for system name.
func (b *bench) app(ctx context.Context, name string, agg *topology.Aggregate) (*topology.App, error) {
	app, err := topology.NewApp("bench-"+b.run+"-"+name, agg)
	if err != nil {
		return nil, err
	}
	if err := topology.EnsureTopics(ctx, b.adm, app, topology.TopicOptions{}); err != nil {
		return nil, err
	}
	return app, nil
}

// deleteTopics deletes the topics of the run's apps from a cluster.
func (b *bench) deleteTopics() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	topics, err := b.adm.ListTopics(ctx)
	if err != nil {
		b.log.Warn("list topics to delete", "err", err)
		return
	}
	var mine []string
	for _, t := range topics.Names() {
		if strings.HasPrefix(t, "bench-"+b.run+"-") {
			mine = append(mine, t)
		}
	}
	if _, err := b.adm.DeleteTopics(ctx, mine...); err != nil {
		b.log.Warn("delete topics", "topics", mine, "err", err)
	}
}

func (b *bench) say(format string, args ...any) {
	fmt.Fprintf(b.progress, "bench: "+format+"\n", args...)
}

// systemResult is what one system measured.
type systemResult struct {
	PerS     float64   `json:"per_s"`      // flat out, commands/s
	FlatOutS float64   `json:"flat_out_s"` // every partition assigned to last commit
	StartupS float64   `json:"startup_s"`  // start to every partition assigned: joining the group
	Latency  []latency `json:"latency"`
	PeakRSS  int64     `json:"peak_rss_bytes"`
	// CPU time per command of the flat-out run, start to end, in µs: of
	// this process (the system measured; nothing else runs in it then), and
	// of the broker child process (0 for another broker).
	CPUus       float64 `json:"cpu_us_per_command"`
	BrokerCPUus float64 `json:"broker_cpu_us_per_command"`
	DiskBytes   int64   `json:"disk_bytes"` // the state store's files after the run
}

// measure runs one system over app's preloaded commands: flat out, then
// every load. The CPU profile, if asked for, covers the flat-out run.
func (b *bench) measure(ctx context.Context, name string, run func(context.Context, *topology.App) (int64, error), app *topology.App, agg *topology.Aggregate) (systemResult, error) {
	var res systemResult
	resetPeakRSS()
	stopProfile, err := b.profile(name)
	if err != nil {
		return res, err
	}
	defer stopProfile()
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	waitCtx, running := context.WithCancel(ctx) // ends when the system stops
	defer running()
	var disk int64
	done := make(chan error, 1)
	b.say("%s: flat out", name)
	began, cpuBegan, brokerBegan := time.Now(), cpuTime(0), cpuTime(b.brokerPID)
	go func() {
		defer running()
		var err error
		disk, err = run(runCtx, app)
		done <- err
	}()
	fail := func(err error) (systemResult, error) {
		stop()
		return res, errors.Join(err, <-done)
	}
	// The clock starts once the group has handed out every partition:
	// from then on each system fetches, decides and commits. (Starting it
	// at the first poll would not count what the client did to return
	// it: its first fetch can bring most of the preloaded commands, and
	// decoding them takes a second of CPU before the poll returns.)
	start, err := waitAssigned(waitCtx, b.adm, app.Group(), app.Topics(agg).Commands, agg.Partitions())
	if err != nil {
		return fail(err)
	}
	end, err := waitConsumed(waitCtx, b.adm, app.Group(), app.Topics(agg).Commands, int64(b.commands))
	if err != nil {
		return fail(err)
	}
	stopProfile()
	res.CPUus = float64((cpuTime(0) - cpuBegan).Microseconds()) / float64(b.commands)
	if b.brokerPID != 0 {
		res.BrokerCPUus = float64((cpuTime(b.brokerPID) - brokerBegan).Microseconds()) / float64(b.commands)
	}
	res.StartupS, res.FlatOutS = start.Sub(began).Seconds(), end.Sub(start).Seconds()
	res.PerS = float64(b.commands) / res.FlatOutS
	b.say("%s: %.0f commands/s (startup %.2fs)", name, res.PerS, res.StartupS)

	w := newWorkload(agg, app.Topics(agg), b.accounts, 2)
	next := b.commands
	for _, load := range b.loads {
		l, err := measureLatency(waitCtx, b.kafka, w, next, load, b.duration)
		if err != nil {
			return fail(fmt.Errorf("latency at %d/s: %w", load, err))
		}
		next += l.Sent
		b.say("%s: at %d/s: p50 %.2fms p99 %.2fms p999 %.2fms (%d of %d answered)", name, load, l.P50ms, l.P99ms, l.P999ms, l.Replies, l.Sent)
		res.Latency = append(res.Latency, l)
	}
	stop()
	if err := <-done; err != nil {
		return res, err
	}
	res.PeakRSS, res.DiskBytes = peakRSS(os.Getpid()), disk
	return res, nil
}

// profile starts the CPU profile of system name's flat-out run, if asked
// for; the returned stop may be called more than once.
func (b *bench) profile(name string) (stop func(), err error) {
	if b.cpuprofile == "" {
		return func() {}, nil
	}
	f, err := os.Create(b.cpuprofile + "." + name + ".pprof")
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	var stopped atomic.Bool
	return func() {
		if stopped.CompareAndSwap(false, true) {
			pprof.StopCPUProfile()
			if err := f.Close(); err != nil {
				b.log.Warn("cpu profile", "err", err)
			}
		}
	}, nil
}

// runDecider runs a decider worker of app, its state store in a new temp
// dir, until ctx ends, and returns the store's size on disk.
func (b *bench) runDecider(ctx context.Context, app *topology.App) (int64, error) {
	dir, err := os.MkdirTemp(b.dir, "state-")
	if err != nil {
		return 0, err
	}
	store, err := statestore.Open(dir, nil)
	if err != nil {
		return 0, err
	}
	w, err := processor.New(processor.Config{
		App: app, Store: store, Kafka: b.kafka, InstanceID: "bench", Logger: b.log,
	})
	if err == nil {
		err = w.Run(ctx)
	}
	if cerr := store.Close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("close state store: %w", cerr))
	}
	size, serr := dirSize(dir)
	return size, errors.Join(err, serr)
}

// runReference runs the reference loop over app's topics until ctx ends.
func (b *bench) runReference(ctx context.Context, app *topology.App) (int64, error) {
	return 0, runReference(ctx, b.kafka, app, "bench", 10000)
}

// benchStateLogBytes keeps the bench's broker from rewriting its log of
// group offsets during a run: the rewrite (at 10 MiB by default) stalls
// every request for 160–200 ms, and whichever system was running then
// took it into its p99 (decider's at 10k/s: 171 ms with it, 38 without,
// in consecutive runs). A real Kafka cleans __consumer_offsets in the
// background.
const benchStateLogBytes = 1 << 30

// startBenchBroker starts a kfake broker on a free port of 127.0.0.1 with
// its log under dir: a `decider broker` child process of this executable
// (pid), or one in this process (pid 0). stop stops it and returns its peak
// RSS (0 when it runs in this process).
func startBenchBroker(ctx context.Context, kind, dir string) (seeds []string, pid int, stop func() (int64, error), err error) {
	addr, err := freeLocalAddr()
	if err != nil {
		return nil, 0, nil, err
	}
	dir, err = os.MkdirTemp(dir, "broker-")
	if err != nil {
		return nil, 0, nil, err
	}
	switch kind {
	case "embedded":
		c, err := startBroker(addr, dir, benchStateLogBytes)
		if err != nil {
			return nil, 0, nil, err
		}
		return []string{addr}, 0, func() (int64, error) { c.Close(); return 0, nil }, nil
	case "process":
	default:
		return nil, 0, nil, fmt.Errorf(`--broker %q: want "process" or "embedded"`, kind)
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, 0, nil, fmt.Errorf("broker process: %w", err)
	}
	cmd := exec.CommandContext(ctx, exe, "broker", "--listen", addr, "--data-dir", dir, "--state-log-bytes", strconv.Itoa(benchStateLogBytes))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, 0, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, 0, nil, fmt.Errorf("broker process: %w", err)
	}
	stop = func() (int64, error) {
		peak := peakRSS(cmd.Process.Pid)
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			return peak, err
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			return peak, fmt.Errorf("broker process did not stop on SIGTERM: %w", <-done)
		}
	}
	// It prints one line once it listens.
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		_, serr := stop()
		return nil, 0, nil, fmt.Errorf("broker process did not start: %w", errors.Join(err, serr))
	}
	go func() { _, _ = io.Copy(io.Discard, out) }()
	return []string{addr}, cmd.Process.Pid, stop, nil
}

// restoreResult is what the restore run measured.
type restoreResult struct {
	Aggregates int     `json:"aggregates"`
	S          float64 `json:"s"`
	PerS       float64 `json:"per_s"`
	PeakRSS    int64   `json:"peak_rss_bytes"`
	DiskBytes  int64   `json:"disk_bytes"`
	// CPU time per snapshot, in µs, of this process and of the broker
	// child process (0 for another broker).
	CPUus       float64 `json:"cpu_us_per_snapshot"`
	BrokerCPUus float64 `json:"broker_cpu_us_per_snapshot"`
}

// measureRestore fills a changelog with --restore-aggregates snapshots
// (each as a worker writes it after three commands: a balance and a dedupe
// window of three replies) and restores every partition of it into an
// empty store, in parallel, as a worker does on its first assignment.
func (b *bench) measureRestore(ctx context.Context, agg *topology.Aggregate) (restoreResult, error) {
	res := restoreResult{Aggregates: b.restoreN}
	app, err := b.app(ctx, "restore", agg)
	if err != nil {
		return res, err
	}
	topic := app.Topics(agg).Snapshots
	b.say("restore: writing %d snapshots", b.restoreN)
	if err := produceAll(ctx, b.kafka, b.restoreN, func(i int) (*kgo.Record, error) {
		return snapshotRecord(agg, topic, i)
	}); err != nil {
		return res, fmt.Errorf("fill %s: %w", topic, err)
	}
	dir, err := os.MkdirTemp(b.dir, "restore-")
	if err != nil {
		return res, err
	}
	store, err := statestore.Open(dir, nil)
	if err != nil {
		return res, err
	}
	resetPeakRSS()
	stopProfile, err := b.profile("restore")
	if err != nil {
		return res, err
	}
	defer stopProfile()
	b.say("restore: restoring %d partitions", b.partitions)
	start, cpuBegan, brokerBegan := time.Now(), cpuTime(0), cpuTime(b.brokerPID)
	stats := make([]statestore.RestoreStats, b.partitions)
	errs := make([]error, b.partitions)
	var wg sync.WaitGroup
	for p := range b.partitions {
		wg.Go(func() {
			stats[p], errs[p] = store.Restore(ctx, statestore.Changelog{Topic: topic, Kafka: b.kafka}, agg.Name(), p)
		})
	}
	wg.Wait()
	res.S = time.Since(start).Seconds()
	res.CPUus = float64((cpuTime(0) - cpuBegan).Microseconds()) / float64(b.restoreN)
	if b.brokerPID != 0 {
		res.BrokerCPUus = float64((cpuTime(b.brokerPID) - brokerBegan).Microseconds()) / float64(b.restoreN)
	}
	stopProfile()
	res.PeakRSS = peakRSS(os.Getpid())
	err = errors.Join(errs...)
	if cerr := store.Close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("close state store: %w", cerr))
	}
	if err != nil {
		return res, err
	}
	restored := 0
	for _, st := range stats {
		restored += st.Records
	}
	if restored != b.restoreN {
		return res, fmt.Errorf("restored %d snapshots of %d", restored, b.restoreN)
	}
	res.PerS = float64(restored) / res.S
	res.DiskBytes, err = dirSize(dir)
	b.say("restore: %.0f snapshots/s (%.2fs)", res.PerS, res.S)
	return res, err
}

// snapshotRecord is the changelog record of account i after an open, a
// deposit and a withdrawal.
func snapshotRecord(agg *topology.Aggregate, topic string, i int) (*kgo.Record, error) {
	id := accountID(i)
	state, err := agg.EncodeState(accounts.Account{Opened: true, Owner: "owner-" + strconv.Itoa(i), Balance: 700})
	if err != nil {
		return nil, err
	}
	recent := make([]schemas.Reply, 3)
	for v := range recent {
		recent[v] = schemas.Reply{CommandID: fmt.Sprintf("%032x", 3*i+v), AggregateID: id, Status: schemas.Accepted, Version: int64(v + 1), Events: 1}
	}
	_, value, err := agg.Schemas().Encode(schemas.Snapshot{AggregateID: id, Version: 3, CommandOffset: int64(3 * i), State: state, Recent: recent})
	if err != nil {
		return nil, err
	}
	return &kgo.Record{Topic: topic, Partition: topology.Partition([]byte(id), agg.Partitions()), Key: []byte(id), Value: value}, nil
}
