// Command decider runs and operates decider apps: an embedded development
// setup (dev), a worker against any Kafka cluster (run), a standalone
// embedded broker (broker), a command sender (send), a benchmark against
// the bare transaction loop (bench), and the operator's tools for any Kafka
// cluster: topics, tail, inspect, rebuild, reset and verify.
//
// Every flag can also be set by an environment variable: --data-dir is
// DECIDER_DATA_DIR, --brokers is DECIDER_BROKERS, and so on. A flag given on
// the command line wins.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
)

// command is one subcommand of the binary.
type command struct {
	summary string
	usage   string // examples, shown by --help
	run     func(ctx context.Context, args []string, stdout io.Writer) error
}

// commands returns the subcommands by name.
func commands() map[string]command {
	return map[string]command{
		"dev":          {"embedded broker + worker of the example app, zero setup", devUsage, runDev},
		"run":          {"a worker of app bank against a Kafka cluster", runUsage, runWorker},
		"send":         {"send one command and print its reply", sendUsage, runSend},
		"broker":       {"the embedded Kafka-compatible broker alone", brokerUsage, runBroker},
		"verify":       {"check the exactly-once invariants over an app's topics", verifyUsage, runVerify},
		"topics":       {"create, describe or verify an app's topics", topicsUsage, runTopics},
		"tail":         {"print the records of one of an app's topics as JSON lines", tailUsage, runTail},
		"inspect":      {"print an aggregate's latest snapshot (and a local store's copy)", inspectUsage, runInspect},
		"rebuild":      {"rebuild the snapshots from the events (after a fix in Evolve)", rebuildUsage, runRebuild},
		"reset":        {"move the consumer group's offsets on the commands topics", resetUsage, runReset},
		"bench":        {"measure decider against the bare transaction loop on one broker", benchUsage, runBench},
		"bench-system": {"one system that bench measures, as its child process", benchSystemUsage, runBenchSystem},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := dispatch(ctx, os.Args[1:], os.Stdout); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "decider:", err)
		}
		os.Exit(exitCode(err))
	}
}

// exitCodeError carries a process exit code other than 1.
type exitCodeError struct {
	code int
	err  error
}

func (e *exitCodeError) Error() string { return e.err.Error() }
func (e *exitCodeError) Unwrap() error { return e.err }

func exitCode(err error) int {
	var ec *exitCodeError
	switch {
	case errors.As(err, &ec):
		return ec.code
	case errors.Is(err, flag.ErrHelp):
		return 2
	}
	return 1
}

func dispatch(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stdout)
		if len(args) == 0 {
			return flag.ErrHelp
		}
		return nil
	}
	c, ok := commands()[args[0]]
	if !ok {
		usage(os.Stderr)
		return fmt.Errorf("unknown command %q", args[0])
	}
	return c.run(ctx, args[1:], stdout)
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "decider: exactly-once command processing for event-sourced aggregates on Kafka")
	fmt.Fprintln(w, "\nUsage: decider <command> [flags]   (decider <command> --help for its flags)")
	cmds := commands()
	for _, n := range slices.Sorted(maps.Keys(cmds)) {
		fmt.Fprintf(w, "  %-12s %s\n", n, cmds[n].summary)
	}
}

// newFlags returns a flag set for a subcommand whose --help prints the
// summary, the examples and the flags with their environment variables.
func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("decider "+name, flag.ContinueOnError)
	fs.Usage = func() {
		c := commands()[name]
		env := "each also settable as DECIDER_<FLAG> in the environment"
		if only := fromFlagsOnly[fs.Name()]; len(only) > 0 {
			env += ", but for --" + strings.Join(only, ", --")
		}
		fmt.Fprintf(fs.Output(), "decider %s: %s\n\n%s\nFlags (%s):\n", name, c.summary, c.usage, env)
		fs.PrintDefaults()
	}
	return fs
}

// fromFlagsOnly names, per command, the flags the environment does not set:
// what makes an operator command write, or chooses what it acts on, is said
// on its command line. A worker's environment (DECIDER_DATA_DIR,
// DECIDER_TRANSACTION_TIMEOUT) must not steer an operator command run beside
// it, nor a stray DECIDER_YES turn a dry run into a rebuild.
var fromFlagsOnly = map[string][]string{
	"decider rebuild": {"yes", "transaction-timeout"},
	"decider reset":   {"dry-run", "to", "data-dir"},
	"decider inspect": {"id", "data-dir"},
	"decider tail":    {"id", "from"},
}

// parse parses args, first applying DECIDER_* environment variables to the
// flags not given on the command line.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		env := envName(f.Name)
		if slices.Contains(fromFlagsOnly[fs.Name()], f.Name) {
			return
		}
		if v, ok := os.LookupEnv(env); ok && !set[f.Name] && err == nil {
			if e := f.Value.Set(v); e != nil {
				err = fmt.Errorf("%s=%q: %w", env, v, e)
			}
		}
	})
	return err
}

// parseAction parses the args of a command whose first argument is an
// action (topics create, tail events): it returns the action, one of
// actions, and parses the flags after it. --help works with or without an
// action.
func parseAction(fs *flag.FlagSet, args []string, actions ...string) (string, error) {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		if err := parse(fs, args); err != nil {
			return "", err
		}
		return "", fmt.Errorf("%s: say what to do first, one of %s", fs.Name(), strings.Join(actions, ", "))
	}
	if !slices.Contains(actions, args[0]) {
		return "", fmt.Errorf("%s %q: want one of %s", fs.Name(), args[0], strings.Join(actions, ", "))
	}
	return args[0], parse(fs, args[1:])
}

// envName is the environment variable that sets flag name.
func envName(name string) string {
	return "DECIDER_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// logFlags adds --log-level and --log-format and returns a function that
// builds the logger from them.
func logFlags(fs *flag.FlagSet) func() *slog.Logger {
	level := fs.String("log-level", "info", "log level: debug, info, warn, error")
	format := fs.String("log-format", "text", "log format: text or json")
	return func() *slog.Logger {
		var l slog.Level
		if err := l.UnmarshalText([]byte(*level)); err != nil {
			l = slog.LevelInfo
		}
		o := &slog.HandlerOptions{Level: l}
		if *format == "json" {
			return slog.New(slog.NewJSONHandler(os.Stderr, o))
		}
		return slog.New(slog.NewTextHandler(os.Stderr, o))
	}
}
