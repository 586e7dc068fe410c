package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// bench --quick --json runs every phase against a broker in the test
// process, the systems in it too, and reports every headline figure. Only
// that the figures are there is checked: a timing is never asserted.
func TestBenchQuick(t *testing.T) {
	var out bytes.Buffer
	if err := dispatch(context.Background(), []string{"bench", "--quick", "--json", "--broker", "embedded", "--systems", "embedded"}, &out); err != nil {
		t.Fatalf("bench: %v", err)
	}
	checkBenchJSON(t, out.Bytes())
}

// By default each system runs in a bench-system child process of the
// binary, which profiles itself on bench's orders.
func TestBenchSystemsInProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "decider")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	prefix := filepath.Join(dir, "p")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "bench", "--quick", "--json", "--broker", "embedded", "--cpuprofile", prefix)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, stderr.Bytes())
	}
	checkBenchJSON(t, out)
	for _, name := range []string{"decider", "reference", "decider-latency", "reference-latency", "restore"} {
		if fi, err := os.Stat(prefix + "." + name + ".pprof"); err != nil || fi.Size() == 0 {
			t.Errorf("profile %s: %v (%v)", name, fi, err)
		}
	}
}

// The bench's broker keeps its log in the directory given, else in RAM
// where the machine has a /dev/shm with room for it, else beside the state
// store in the bench's own directory; a directory that is not there is an
// error.
func TestBenchBrokerDir(t *testing.T) {
	given, fallback := t.TempDir(), t.TempDir()
	dir, err := benchBrokerDir(given, fallback, 1<<20)
	if err != nil || filepath.Dir(dir) != given {
		t.Errorf("with --broker-dir %s: %q, %v", given, dir, err)
	}
	dir, err = benchBrokerDir("", fallback, 1<<20)
	if err != nil {
		t.Fatalf("by default: %v", err)
	}
	defer os.RemoveAll(dir)
	if parent := filepath.Dir(dir); parent != ramDir && parent != fallback {
		t.Errorf("by default: %q, want it under %s or %s", dir, ramDir, fallback)
	}
	if dir, err := benchBrokerDir("", fallback, 1<<62); err != nil || filepath.Dir(dir) != fallback {
		t.Errorf("with no room in %s: %q, %v; want it under %s", ramDir, dir, err, fallback)
	}
	if _, err := benchBrokerDir(filepath.Join(given, "missing"), fallback, 1<<20); err == nil {
		t.Error("a --broker-dir that is not there: no error")
	}
}

// A bench-system process answers each order, and stops its system once
// its orders end.
func TestObey(t *testing.T) {
	var out bytes.Buffer
	stopped := false
	obey(strings.NewReader("stop-profile\nhurry up\nprofile "+filepath.Join(t.TempDir(), "p.pprof")+"\nstop-profile\n"), &out, func() { stopped = true })
	want := []string{"error: no profile running", `error: unknown order "hurry"`, "ok", "ok"}
	if got := strings.Split(strings.TrimSpace(out.String()), "\n"); !slices.Equal(got, want) {
		t.Errorf("answers %q, want %q", got, want)
	}
	if !stopped {
		t.Error("the system was not stopped when the orders ended")
	}
}

// checkBenchJSON checks that bench's JSON holds every headline figure.
func checkBenchJSON(t *testing.T, out []byte) {
	t.Helper()
	var got map[string]any
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("bench printed %q: %v", out, err)
	}
	for _, key := range []string{"throughput_ratio", "p99_ratio_1k", "p99_ratio_10k", "p99_ratio_round_median_10k", "cpu_ratio_10k", "commands_per_s", "reference_per_s", "restore_per_s", "peak_rss_bytes", "pebble_bytes"} {
		if v, ok := got[key].(float64); !ok || !(v > 0) {
			t.Errorf("%s = %v, want a positive number", key, got[key])
		}
	}
	if in, ok := got["p99_ratio_interval_10k"].([]any); !ok || len(in) != 2 || !(in[0].(float64) > 0) || in[0].(float64) > in[1].(float64) {
		t.Errorf("p99_ratio_interval_10k = %v, want [lo, hi] with 0 < lo <= hi", got["p99_ratio_interval_10k"])
	}
}
