package main

import (
	"bufio"
	"context"
	"errors"
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
	"time"

	"github.com/deciderhq/decider/examples/accounts"
	"github.com/deciderhq/decider/processor"
	"github.com/deciderhq/decider/statestore"
	"github.com/deciderhq/decider/topology"
	"github.com/twmb/franz-go/pkg/kgo"
)

const benchSystemUsage = `Runs one of the systems that "decider bench" measures, in a process of
its own: bench starts it as a child process, with the topics of the run
already created, and stops it by closing its standard input. Meanwhile
each line on its standard input is an order, answered by one line on its
standard output ("ok", or "error: …"):

  profile PATH   start a CPU profile of this process into PATH
  stop-profile   stop it

Examples:
  decider bench-system --system decider --app bench-1a2b3c-decider --brokers 127.0.0.1:9092 --state-dir /tmp/decider-bench-1/state-2
`

// runBenchSystem is the bench-system command.
func runBenchSystem(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("bench-system")
	system := fs.String("system", "", `"decider" or "reference"`)
	appName := fs.String("app", "", "the app whose topics it runs over (bench-<run>-<system>)")
	partitions := fs.Int("partitions", int(topology.DefaultPartitions), "partitions of the app's commands topic")
	brokers := fs.String("brokers", "", "seed brokers")
	stateDir := fs.String("state-dir", "", "directory of decider's state store (kept across its restarts)")
	if err := parse(fs, args); err != nil {
		return err
	}
	agg, err := accounts.Aggregate(int32(*partitions))
	if err != nil {
		return err
	}
	app, err := topology.NewApp(*appName, agg)
	if err != nil {
		return err
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	// Not waited for: a system that stopped by itself ends the process,
	// and obey with it. One stopped by the end of the orders stops once
	// obey has written its profile.
	go obey(os.Stdin, stdout, stop)
	return runSystem(ctx, *system, []kgo.Opt{kgo.SeedBrokers(splitBrokers(*brokers)...)}, app, *stateDir, benchLogger())
}

// obey carries out the orders read from in (see benchSystemUsage),
// answering each on out, until in ends; then it stops its profile, if one
// runs, and the system.
func obey(in io.Reader, out io.Writer, stop context.CancelFunc) {
	defer stop()
	stopProfile := func() error { return errors.New("no profile running") }
	defer func() { _ = stopProfile() }()
	lines := bufio.NewScanner(in)
	for lines.Scan() {
		order, arg, _ := strings.Cut(lines.Text(), " ")
		var err error
		switch order {
		case "profile":
			var next func() error
			if next, err = startProfile(arg); err == nil {
				_ = stopProfile()
				stopProfile = next
			}
		case "stop-profile":
			err = stopProfile()
		default:
			err = fmt.Errorf("unknown order %q", order)
		}
		answer := "ok"
		if err != nil {
			answer = "error: " + err.Error()
		}
		fmt.Fprintln(out, answer)
	}
}

// startProfile starts a CPU profile of this process into path; the
// returned stop may be called more than once.
func startProfile(path string) (stop func() error, err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	var stopped atomic.Bool
	return func() error {
		if !stopped.CompareAndSwap(false, true) {
			return nil
		}
		pprof.StopCPUProfile()
		return f.Close()
	}, nil
}

// benchLogger logs what a system warns of, to standard error.
func benchLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// runSystem runs bench's system name over app's topics until ctx ends: a
// decider worker of the example domain with its state store in stateDir,
// or the reference loop.
func runSystem(ctx context.Context, name string, kafka []kgo.Opt, app *topology.App, stateDir string, log *slog.Logger) error {
	switch name {
	case "decider":
		return runBenchWorker(ctx, kafka, app, stateDir, log)
	case "reference":
		return runReference(ctx, kafka, app, "bench", 10000)
	}
	return fmt.Errorf(`system %q: want "decider" or "reference"`, name)
}

// runBenchWorker runs a decider worker of app until ctx ends, with its
// state store in dir: a restarted worker goes on from it.
func runBenchWorker(ctx context.Context, kafka []kgo.Opt, app *topology.App, dir string, log *slog.Logger) error {
	store, err := statestore.Open(dir, nil)
	if err != nil {
		return err
	}
	w, err := processor.New(processor.Config{
		App: app, Store: store, Kafka: kafka, InstanceID: "bench", Logger: log,
	})
	if err == nil {
		err = w.Run(ctx)
	}
	if cerr := store.Close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("close state store: %w", cerr))
	}
	return err
}

// start runs s until s.stop is called, which returns what its run
// returned; s.waitCtx ends when it stops, by itself too. It runs in a
// bench-system child process, or in this process with --systems
// embedded.
func (b *bench) start(ctx context.Context, s *benchSystem) error {
	waitCtx, running := context.WithCancel(ctx)
	done := make(chan error, 1)
	if !b.children {
		runCtx, cancel := context.WithCancel(ctx)
		go func() {
			defer running()
			done <- runSystem(runCtx, s.name, b.kafka, s.app, b.stateDir, b.log)
		}()
		s.waitCtx, s.stop, s.cpuBase = waitCtx, sync.OnceValue(func() error {
			cancel()
			return <-done
		}), cpuTime(0)
		return nil
	}
	child, err := b.startChild(s)
	if err != nil {
		running()
		return fmt.Errorf("%s process: %w", s.name, err)
	}
	go func() {
		defer running()
		done <- child.cmd.Wait()
	}()
	s.child, s.waitCtx = child, waitCtx
	s.stop = sync.OnceValue(func() error {
		child.orders.Close() // it stops once its standard input ends
		defer child.answers.Close()
		select {
		case err := <-done:
			return err
		case <-time.After(2 * time.Minute): // a worker writes its state cache back first
			_ = child.cmd.Process.Kill()
			return fmt.Errorf("%s process did not stop: %w", s.name, <-done)
		}
	})
	return nil
}

// systemProcess is a bench-system child process and the pipes it takes
// its orders on and answers on.
type systemProcess struct {
	cmd     *exec.Cmd
	orders  io.WriteCloser
	answers *os.File
	read    *bufio.Reader // of answers
}

// startChild starts s in a bench-system child process of this executable.
func (b *bench) startChild(s *benchSystem) (*systemProcess, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "bench-system", "--system", s.name, "--app", s.app.Name(),
		"--partitions", strconv.Itoa(int(b.partitions)), "--brokers", strings.Join(b.seeds, ","), "--state-dir", b.stateDir)
	cmd.Stderr = os.Stderr
	orders, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	// A pipe of its own, not StdoutPipe: Wait would close that beside an
	// order waiting for its answer.
	answers, out, err := os.Pipe()
	if err != nil {
		orders.Close()
		return nil, err
	}
	cmd.Stdout = out
	err = cmd.Start()
	out.Close()
	if err != nil {
		orders.Close()
		answers.Close()
		return nil, err
	}
	return &systemProcess{cmd: cmd, orders: orders, answers: answers, read: bufio.NewReader(answers)}, nil
}

// order gives p an order and returns its answer's error.
func (p *systemProcess) order(o string) error {
	if _, err := fmt.Fprintln(p.orders, o); err != nil {
		return fmt.Errorf("order %q: %w", o, err)
	}
	answer, err := p.read.ReadString('\n')
	if err != nil {
		return fmt.Errorf("order %q: no answer: %w", o, err)
	}
	if msg, failed := strings.CutPrefix(strings.TrimSpace(answer), "error: "); failed {
		return fmt.Errorf("order %q: %s", o, msg)
	}
	return nil
}

// profile starts the CPU profile name of s's process (this one's for a
// nil s), if asked for; the returned stop may be called more than once.
func (b *bench) profile(s *benchSystem, name string) (stop func(), err error) {
	if b.cpuprofile == "" {
		return func() {}, nil
	}
	path := b.cpuprofile + "." + name + ".pprof"
	if s == nil || s.child == nil {
		stopHere, err := startProfile(path)
		if err != nil {
			return nil, err
		}
		return func() {
			if err := stopHere(); err != nil {
				b.log.Warn("cpu profile", "err", err)
			}
		}, nil
	}
	if err := s.child.order("profile " + path); err != nil {
		return nil, err
	}
	return sync.OnceFunc(func() {
		if err := s.child.order("stop-profile"); err != nil {
			b.log.Warn("cpu profile", "system", s.name, "err", err)
		}
	}), nil
}
