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
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/deciderhq/decider/examples/accounts"
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
    second, and a reader of the replies topic measures send → reply (p50,
    p99, p999). Each system gets --duration of each load, in --rounds
    rounds; in each round the systems take turns at each load (decider,
    reference, reference, decider, …), so that a slow spell of the
    machine falls on both. Each p99 ratio is printed with its 90%
    interval: each system's latencies, by the second their commands were
    sent in, are drawn again with replacement, and the ratio of the drawn
    p99s taken. Decider stays up from its flat-out run to the end (a
    restart would empty its state cache); the reference is stopped after
    its flat-out run and started again for its first turn, warmed up for
    a second, and then stays up too.
 3. restore: --restore-aggregates snapshots in the changelog are restored
    into an empty store, every partition in parallel as a worker does.
 4. peak RSS of each system's process in its flat-out run and of this
    process in the restore (VmHWM), and the state store's size on disk.

Each system runs in a "decider bench-system" child process of its own by
default, started for its runs and stopped after them, as a worker runs
apart from its callers: it shares neither memory nor garbage collector
with the other system or with the sender and reader that measure it, and
its CPU time and peak RSS are its process's. --systems embedded runs them
in this process instead.

The broker is a "decider broker" child process by default (it does not
share this process's memory and garbage collector with what is measured),
or --broker embedded, or a cluster with --brokers (topics named
bench-<run>-… are created and deleted again). A broker it starts keeps its
log in /dev/shm, in RAM, when that has room for it (a default run writes
2.3 GB; --broker-dir to choose): on a disk, the kernel's write-back of the
log's pages, hundreds of MB at once, stalls the broker's writes, a stall
that falls in whichever system's turn it happens in and that no worker
whose broker has disks of its own sees.

Examples:
  decider bench
  decider bench --accounts 1000000 --json
  decider bench --quick --broker embedded
  decider bench --cpuprofile /tmp/bench   # /tmp/bench.{decider,reference,decider-latency,reference-latency,restore}.pprof
`

// quickFlags are --quick's sizes, for the flags not given otherwise.
var quickFlags = map[string]string{
	"partitions": "4", "accounts": "300", "commands": "900", "loads": "1000,10000",
	"duration": "500ms", "rounds": "2", "restore-aggregates": "2000",
}

// bench is one run of `decider bench`.
type bench struct {
	kafka      []kgo.Opt
	seeds      []string // of kafka
	adm        *kadm.Client
	run        string // names the run's apps: bench-<run>-decider, …
	dir        string // temp dir of the state stores
	stateDir   string // of the decider worker's, kept across its restarts
	children   bool   // each system runs in a child process (--systems process)
	partitions int32
	commands   int
	accounts   int
	loads      []int
	duration   time.Duration
	rounds     int
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
	brokerDir := fs.String("broker-dir", "", "directory under which the started broker keeps its log (default: "+ramDir+", in RAM, when it has room for the run's log, about 512 bytes a command, else the bench's temporary directory)")
	systems := fs.String("systems", "process", `where the systems measured run: "process" (each in a decider bench-system child process, apart from the sender and reader that measure it) or "embedded" (in this process)`)
	partitions := fs.Int("partitions", int(topology.DefaultPartitions), "partitions of the commands topics")
	commands := fs.Int("commands", 0, "commands preloaded for the flat-out run: the first --accounts open them, the others are deposits and withdrawals (default 1500000, or --accounts if more: the reference loop gets faster for the first million or so, and a shorter run compares decider with its warm-up)")
	accts := fs.Int("accounts", 100000, "accounts the commands go to (the first --accounts commands open them)")
	loads := fs.String("loads", "1000,10000,50000", "offered loads of the latency runs, commands per second, comma-separated")
	// 10 s until the fourteenth round: a block bootstrap of two runs of 60
	// s a load and system (bench --commands 300000 --loads 1000,10000
	// --duration 60s --restore-aggregates 1000) put the 90% interval of a
	// 10 s run's p99 ratio at 10k/s at 0.49–2.01 and 0.64–1.49, of a 30 s
	// run's at 0.58–1.71 and 0.74–1.18.
	duration := fs.Duration("duration", 30*time.Second, "time each system is offered each load, over all rounds (the p99 of a shorter run is mostly which system a few stalls of the machine fell on)")
	// 2 rounds until the eleventh round: five runs of one binary each way
	// (bench --commands 100000 --loads 1000,10000 --rounds N
	// --restore-aggregates 1000, alternating) put the p99 ratio at 10k/s at
	// 0.79–2.20 with 2 and 0.93–1.14 with 6.
	rounds := fs.Int("rounds", 6, "rounds of latency runs: each system gets --duration/rounds of each load per round, the systems alternating (ABBA…), so that a busy moment of the machine does not fall on one of them only")
	restoreN := fs.Int("restore-aggregates", 1000000, "snapshots in the changelog of the restore run")
	cpuprofile := fs.String("cpuprofile", "", "write CPU profiles of the flat-out runs, of each system's first latency round and of the restore to `prefix`.decider.pprof, prefix.reference.pprof, prefix.decider-latency.pprof, prefix.reference-latency.pprof and prefix.restore.pprof")
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
		rounds: *rounds, restoreN: *restoreN, cpuprofile: *cpuprofile, progress: os.Stderr,
		log: benchLogger(), children: *systems == "process",
	}
	if *systems != "process" && *systems != "embedded" {
		return fmt.Errorf(`--systems %q: want "process" or "embedded"`, *systems)
	}
	for _, s := range strings.Split(*loads, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			return fmt.Errorf("--loads %q: %q is not a positive number", *loads, s)
		}
		b.loads = append(b.loads, n)
	}
	if b.commands == 0 {
		b.commands = max(1_500_000, b.accounts)
	}
	switch {
	case b.partitions <= 0 || b.commands <= 0 || b.accounts <= 0 || b.restoreN <= 0:
		return errors.New("--partitions, --commands, --accounts and --restore-aggregates must be positive")
	case b.duration <= 0 || b.rounds <= 0:
		return errors.New("--duration and --rounds must be positive")
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

	res := benchResult{Machine: thisMachine(), Partitions: b.partitions, Commands: b.commands, Accounts: b.accounts, Duration: b.duration.String(), Rounds: b.rounds}
	seeds := splitBrokers(*brokers)
	res.Broker = "cluster " + *brokers
	stopBroker := func() (int64, error) { return 0, nil }
	if len(seeds) == 0 {
		logDir, err := benchBrokerDir(*brokerDir, dir, b.brokerLogBytes())
		if err != nil {
			return err
		}
		defer os.RemoveAll(logDir)
		res.Broker = fmt.Sprintf("%s (kfake, its log in %s)", *brokerKind, filepath.Dir(logDir))
		if seeds, b.brokerPID, stopBroker, err = startBenchBroker(ctx, *brokerKind, logDir); err != nil {
			return err
		}
	}
	b.seeds, b.kafka = seeds, []kgo.Opt{kgo.SeedBrokers(seeds...)}
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
	// The reference runs first and is stopped after its flat-out run, so
	// that decider's runs alone. Decider, whose state cache a restart would
	// empty, then stays up through every latency round, and the reference
	// from its first turn on: the one waiting for its turn is idle. The
	// systems take turns at each load of each round ABBA…, decider first:
	// what its flat-out run left to do (Pebble's flushes and compactions)
	// falls in its own turn. (Until the twenty-third round a turn held
	// every load, 16 s: the machine's slow spells, which last a minute or
	// more, fell on one system's turns more than on the other's.)
	systems := []*benchSystem{
		{name: "reference", out: &res.Reference},
		{name: "decider", out: &res.Decider, keep: true},
	}
	if b.stateDir, err = os.MkdirTemp(b.dir, "state-"); err != nil {
		return err
	}
	for _, s := range systems {
		if s.app, err = b.app(ctx, s.name, agg); err != nil {
			return err
		}
		b.say("preloading %d commands over %d accounts for %s", b.commands, b.accounts, s.name)
		if err := preload(ctx, b.kafka, newWorkload(agg, s.app.Topics(agg), b.accounts, 1), b.commands); err != nil {
			return fmt.Errorf("preload %s: %w", s.name, err)
		}
		s.next, s.runs = b.commands, make([]latencyRun, len(b.loads))
	}
	defer func() {
		for _, s := range systems {
			if s.stop != nil {
				_ = s.stop()
			}
		}
	}()
	for _, s := range systems {
		if err := b.flatOut(ctx, s, agg); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	for round := range b.rounds {
		for j := range b.loads {
			for turn := range systems {
				s := systems[len(systems)-1-turn]
				if (round*len(b.loads)+j)%2 == 1 {
					s = systems[turn]
				}
				if err := b.latencyTurn(ctx, s, agg, round, j); err != nil {
					return fmt.Errorf("%s: %w", s.name, err)
				}
			}
		}
	}
	for _, s := range systems {
		if s.stop != nil {
			if err := s.stop(); err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			s.stop = nil
		}
		for j, load := range b.loads {
			l := summarize(load, s.runs[j])
			b.say("%s: at %d/s: p50 %.2fms p99 %.2fms p999 %.2fms (%d of %d answered)", s.name, load, l.P50ms, l.P99ms, l.P999ms, l.Replies, l.Sent)
			s.out.Latency = append(s.out.Latency, l)
		}
	}
	ref, dec := systems[0], systems[1]
	if dec.out.DiskBytes, err = dirSize(b.stateDir); err != nil {
		return err
	}
	for j := range b.loads {
		lo, hi := ratioInterval(dec.runs[j].blocks, ref.runs[j].blocks, 0.99)
		res.P99RatioInterval = append(res.P99RatioInterval, [2]float64{lo, hi})
	}
	res.Restore, err = b.measureRestore(ctx, agg)
	return err
}

// benchSystem is one of the systems measured ("decider" or "reference",
// see runSystem), and its state in the run.
type benchSystem struct {
	name string
	out  *systemResult
	keep bool // up from its flat-out run to the end of the latency rounds

	app         *topology.App
	waitCtx     context.Context // ends when the running system stops
	stop        func() error    // of the running system; nil when it is not running
	child       *systemProcess  // the process it runs in; nil for this one
	cpuBase     time.Duration   // this process's CPU time when s started in it
	next        int             // the next command of its latency workload
	runs        []latencyRun    // by load
	stopProfile func()          // of its first round's turns
}

// cpu returns the CPU time s's process used since s started: its own
// process's, or this one's, which then includes the sender's and the
// reader's.
func (s *benchSystem) cpu() time.Duration {
	if s.child != nil {
		return cpuTime(s.pid())
	}
	return cpuTime(0) - s.cpuBase
}

// pid returns the pid of s's process.
func (s *benchSystem) pid() int {
	if s.child != nil {
		return s.child.cmd.Process.Pid
	}
	return os.Getpid()
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
	// the system's process (with --systems embedded, this one, in which
	// nothing else runs then), and of the broker child process (0 for
	// another broker).
	CPUus       float64 `json:"cpu_us_per_command"`
	BrokerCPUus float64 `json:"broker_cpu_us_per_command"`
	DiskBytes   int64   `json:"disk_bytes"` // the state store's files after the run
}

// flatOut runs s over its preloaded commands as fast as it goes, and stops
// it unless it is kept. The CPU profile, if asked for, covers the run, and
// the peak RSS and CPU time are its process's over this run.
func (b *bench) flatOut(ctx context.Context, s *benchSystem, agg *topology.Aggregate) error {
	res := s.out
	resetPeakRSS()
	b.say("%s: flat out", s.name)
	began, brokerBegan := time.Now(), cpuTime(b.brokerPID)
	if err := b.start(ctx, s); err != nil {
		return err
	}
	fail := func(err error) error {
		err = errors.Join(err, s.stop())
		s.stop = nil
		return err
	}
	stopProfile, err := b.profile(s, s.name)
	if err != nil {
		return fail(err)
	}
	defer stopProfile()
	// The clock starts once the group has handed out every partition:
	// from then on each system fetches, decides and commits. (Starting it
	// at the first poll would not count what the client did to return
	// it: its first fetch can bring most of the preloaded commands, and
	// decoding them takes a second of CPU before the poll returns.)
	topic := s.app.Topics(agg).Commands
	start, err := waitAssigned(s.waitCtx, b.adm, s.app.Group(), topic, agg.Partitions())
	if err != nil {
		return fail(err)
	}
	end, err := waitConsumed(s.waitCtx, b.adm, s.app.Group(), topic, int64(b.commands))
	if err != nil {
		return fail(err)
	}
	stopProfile()
	res.CPUus = float64(s.cpu().Microseconds()) / float64(b.commands)
	if b.brokerPID != 0 {
		res.BrokerCPUus = float64((cpuTime(b.brokerPID) - brokerBegan).Microseconds()) / float64(b.commands)
	}
	res.StartupS, res.FlatOutS = start.Sub(began).Seconds(), end.Sub(start).Seconds()
	res.PerS = float64(b.commands) / res.FlatOutS
	b.say("%s: %.0f commands/s (startup %.2fs)", s.name, res.PerS, res.StartupS)
	res.PeakRSS = peakRSS(s.pid())
	if s.keep {
		return nil
	}
	return fail(nil)
}

// latencyTurn offers s load j of the bench for --duration/--rounds and
// adds the run to s.runs[j]. A system not running is started and left
// running. Its first turn is warmed up for a second at the first load (a
// client's first requests find no connection yet). The CPU profile, if
// asked for, covers s's turns of the first round (and the other's between
// them, in which s is idle).
func (b *bench) latencyTurn(ctx context.Context, s *benchSystem, agg *topology.Aggregate, round, j int) error {
	each := b.duration / time.Duration(b.rounds)
	if s.stop == nil {
		if err := b.start(ctx, s); err != nil {
			return err
		}
		if _, err := waitAssigned(s.waitCtx, b.adm, s.app.Group(), s.app.Topics(agg).Commands, agg.Partitions()); err != nil {
			return err
		}
	}
	if round == 0 && j == 0 { // s's first turn
		w := newWorkload(agg, s.app.Topics(agg), b.accounts, 0)
		warm, err := measureLatency(s.waitCtx, b.kafka, w, s.next, b.loads[0], min(time.Second, each), "w")
		s.next += warm.sent
		if err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
		if s.stopProfile, err = b.profile(s, s.name+"-latency"); err != nil {
			return err
		}
	}
	load := b.loads[j]
	b.say("%s: round %d of %d, %d/s", s.name, round+1, b.rounds, load)
	if round == 0 && j == len(b.loads)-1 {
		defer s.stopProfile()
	}
	// Each turn's commands are a workload of their own, the same for both
	// systems.
	w := newWorkload(agg, s.app.Topics(agg), b.accounts, 2+uint64(round*len(b.loads)+j))
	cpuBegan, callerBegan, brokerBegan := s.cpu(), cpuTime(0), cpuTime(b.brokerPID)
	r, err := measureLatency(s.waitCtx, b.kafka, w, s.next, load, each, fmt.Sprintf("%d-%d", load, round))
	r.cpu, r.brokerCPU = s.cpu()-cpuBegan, cpuTime(b.brokerPID)-brokerBegan
	if s.child != nil {
		r.callerCPU = cpuTime(0) - callerBegan
	}
	s.next += r.sent
	if err != nil {
		return fmt.Errorf("latency at %d/s: %w", load, err)
	}
	s.runs[j].add(r)
	return nil
}

// benchStateLogBytes keeps the bench's broker from rewriting its log of
// group offsets during a run: the rewrite (at 10 MiB by default) stalls
// every request for 160–200 ms, and whichever system was running then
// took it into its p99 (decider's at 10k/s: 171 ms with it, 38 without,
// in consecutive runs). A real Kafka cleans __consumer_offsets in the
// background.
const benchStateLogBytes = 1 << 30

// ramDir is where the bench's broker keeps its log by default: a
// RAM-backed file system on Linux.
const ramDir = "/dev/shm"

// benchBrokerDir makes the directory the bench's broker keeps its log in,
// under base, or when base is "" under ramDir if it has room for need
// bytes, else under fallback (the bench's temporary directory, which also
// holds the state store). Why in RAM: the broker writes every batch of
// both systems to its log files, and the kernel writes their dirty pages
// back hundreds of MB at once, the broker's writes stalling meanwhile. With the log on disk,
// in `decider bench --commands 4000000 --loads 10000 --rounds 1
// --restore-aggregates 1000` (full dedupe windows), Dirty in /proc/meminfo
// fell from 380 MB to 0 in half a second of decider's latency run, and
// that half second's replies took up to 82 ms (decider's p999 was 52–67
// ms in four such runs, 17–18 ms in two with the log in RAM). A worker's
// broker has disks of its own.
func benchBrokerDir(base, fallback string, need uint64) (string, error) {
	if base != "" {
		return os.MkdirTemp(base, "decider-bench-broker-")
	}
	var st syscall.Statfs_t
	if syscall.Statfs(ramDir, &st) == nil && st.Bavail*uint64(st.Bsize) >= need {
		if dir, err := os.MkdirTemp(ramDir, "decider-bench-broker-"); err == nil {
			return dir, nil
		}
	}
	return os.MkdirTemp(fallback, "broker-")
}

// brokerLogBytes is a generous estimate of what the run writes to the
// broker's log: 512 bytes a command, each system's (a default run, 6.7M
// commands, left 2.3 GB), and 128 a restore snapshot.
func (b *bench) brokerLogBytes() uint64 {
	commands := 2 * b.commands
	for _, load := range b.loads {
		commands += 2 * int(float64(load)*b.duration.Seconds())
	}
	return 512*uint64(commands) + 128*uint64(b.restoreN)
}

// startBenchBroker starts a kfake broker on a free port of 127.0.0.1 with
// its log under dir: a `decider broker` child process of this executable
// (pid), or one in this process (pid 0). stop stops it and returns its peak
// RSS (0 when it runs in this process).
func startBenchBroker(ctx context.Context, kind, dir string) (seeds []string, pid int, stop func() (int64, error), err error) {
	addr, err := freeLocalAddr()
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
	stopProfile, err := b.profile(nil, "restore")
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
	recent := make([]schemas.Reply, 3) // without the aggregate id, as the worker keeps a window
	for v := range recent {
		recent[v] = schemas.Reply{CommandID: fmt.Sprintf("%032x", 3*i+v), Status: schemas.Accepted, Version: int64(v + 1), Events: 1}
	}
	_, value, err := agg.Schemas().Encode(schemas.Snapshot{AggregateID: id, Version: 3, CommandOffset: int64(3 * i), State: state, Recent: recent})
	if err != nil {
		return nil, err
	}
	return &kgo.Record{Topic: topic, Partition: topology.Partition([]byte(id), agg.Partitions()), Key: []byte(id), Value: value}, nil
}
