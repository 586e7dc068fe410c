// Package deploy_test checks the deployment files in this directory against
// the code they deploy. Nothing here starts Docker or Kubernetes (neither
// runs where these tests run); the files are parsed and compared with:
//
//   - the flags of `decider run --help` (every --flag and DECIDER_* variable
//     that compose, Kubernetes and the Dockerfile set must exist);
//   - a real worker (`decider dev` as a subprocess): the probe and scrape
//     paths must answer 200, and every metric name in the dashboard's and
//     the alerts' PromQL must be in its /metrics output, or, for metrics
//     that only appear after an event this test does not cause (a
//     transaction abort), among the names declared in processor/metrics.go;
//   - each other: ports, service names, data dir, instance ids, volumes,
//     grace periods against the transaction timeout, mounted paths.
//
// When promtool is on PATH (Debian: apt-get install prometheus),
// TestPromtool also runs `promtool check config`, `check rules` and the
// alert rules' unit tests (prometheus/alerts_test.yml); otherwise it skips.
package deploy_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// decider is the binary built from ../cmd/decider by TestMain.
var decider string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "decider-deploy-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	decider = filepath.Join(dir, "decider")
	if out, err := exec.Command("go", "build", "-o", decider, "../cmd/decider").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build ../cmd/decider: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// flagSet maps the flags of `decider run` to their defaults ("" if none).
type flagSet map[string]string

var (
	flagLine    = regexp.MustCompile(`(?m)^  -([a-z][a-z0-9-]*)(?: \w+)?\n\s+(.*)$`)
	flagDefault = regexp.MustCompile(`\(default (?:"([^"]*)"|([^)]*))\)$`)
)

// runFlags reads the flags from `decider run --help`, which exits with code
// 2 (flag.ErrHelp) after printing them.
var runFlags = sync.OnceValues(func() (flagSet, error) {
	out, err := exec.Command(decider, "run", "--help").CombinedOutput()
	if ee := (*exec.ExitError)(nil); !errors.As(err, &ee) || ee.ExitCode() != 2 {
		return nil, fmt.Errorf("decider run --help: %v, want exit code 2\n%s", err, out)
	}
	fs := flagSet{}
	for _, m := range flagLine.FindAllStringSubmatch(string(out), -1) {
		d := flagDefault.FindStringSubmatch(m[2])
		if d != nil {
			fs[m[1]] = d[1] + d[2]
		} else {
			fs[m[1]] = ""
		}
	}
	for _, want := range []string{"brokers", "data-dir", "http", "instance", "transaction-timeout"} {
		if _, ok := fs[want]; !ok {
			return nil, fmt.Errorf("no -%s in decider run --help (parsed %v):\n%s", want, fs, out)
		}
	}
	return fs, nil
})

func flags(t *testing.T) flagSet {
	t.Helper()
	fs, err := runFlags()
	if err != nil {
		t.Fatal(err)
	}
	return fs
}

// envName is the environment variable of a flag: DECIDER_<FLAG>, - → _.
func envName(flag string) string {
	return "DECIDER_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// value is a flag's value in a worker's environment: the variable's if
// set, else the default.
func (fs flagSet) value(env map[string]string, flag string) string {
	if v, ok := env[envName(flag)]; ok {
		return v
	}
	return fs[flag]
}

// checkEnv checks that every DECIDER_* variable in env is a flag's.
func (fs flagSet) checkEnv(t *testing.T, where string, env map[string]string) {
	t.Helper()
	for k := range env {
		if !strings.HasPrefix(k, "DECIDER_") {
			continue
		}
		flag := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(k, "DECIDER_"), "_", "-"))
		if _, ok := fs[flag]; !ok {
			t.Errorf("%s: %s is no flag of decider run (no --%s)", where, k, flag)
		}
	}
}

// checkArgs checks that args are "run" and flags of decider run.
func (fs flagSet) checkArgs(t *testing.T, where string, args []string) {
	t.Helper()
	if len(args) == 0 || args[0] != "run" {
		t.Errorf("%s: arguments %q, want the run command first", where, args)
		return
	}
	for _, a := range args[1:] {
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if _, ok := fs[name]; strings.HasPrefix(a, "-") && !ok {
			t.Errorf("%s: %s is no flag of decider run", where, a)
		}
	}
}

// port is the port of a host:port address.
func port(t *testing.T, addr string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	return p
}

// duration parses a duration, failing the test if it cannot.
func duration(t *testing.T, what, s string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("%s %q: %v", what, s, err)
	}
	return d
}

func TestRunHelpListsFlags(t *testing.T) {
	fs := flags(t)
	if fs["brokers"] != "localhost:9092" || fs["transaction-timeout"] != "10s" {
		t.Errorf("defaults read from --help: brokers %q, transaction-timeout %q", fs["brokers"], fs["transaction-timeout"])
	}
}

// readYAML decodes the documents of a YAML file into yaml.Nodes, failing on
// a syntax error or a mapping with a key given twice.
func readYAML(t *testing.T, path string) []*yaml.Node {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var docs []*yaml.Node
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			break
		}
		var v any // decoded too, for the checks a node skips (keys given twice)
		if err == nil {
			err = n.Decode(&v)
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		docs = append(docs, &n)
	}
	if len(docs) == 0 {
		t.Fatalf("%s: no YAML document", path)
	}
	return docs
}

// decodeYAML decodes a one-document YAML file into v.
func decodeYAML(t *testing.T, path string, v any) {
	t.Helper()
	docs := readYAML(t, path)
	if len(docs) != 1 {
		t.Fatalf("%s: %d documents, want 1", path, len(docs))
	}
	if err := docs[0].Decode(v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func decodeJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func TestEveryFileParses(t *testing.T) {
	n := 0
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch filepath.Ext(path) {
		case ".yml", ".yaml":
			readYAML(t, path)
		case ".json":
			var v map[string]any
			decodeJSON(t, path, &v)
		default:
			return nil
		}
		n++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 10 {
		t.Errorf("parsed %d YAML and JSON files, want the 10 or more of deploy/", n)
	}
}
