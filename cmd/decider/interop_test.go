package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/deciderhq/decider/topology"
)

const pythonPackages = "python3-confluent-kafka python3-avro"

// python3WithModules returns a python3 that imports confluent_kafka and
// avro. It tries python3 on PATH first, then Debian's /usr/bin/python3:
// apt installs python3-confluent-kafka and python3-avro for that one only,
// and a pyenv or virtualenv python3 earlier on PATH does not see them.
func python3WithModules() (string, error) {
	var tried []string
	candidates := []string{"/usr/bin/python3"}
	if p, err := exec.LookPath("python3"); err == nil {
		candidates = append([]string{p}, candidates...)
	} else {
		tried = append(tried, "python3 on PATH: "+err.Error())
	}
	seen := map[string]bool{}
	for _, py := range candidates {
		if seen[py] {
			continue
		}
		seen[py] = true
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, py, "-c", "import confluent_kafka, avro").CombinedOutput()
		cancel()
		if err == nil {
			return py, nil
		}
		why := fmt.Sprintf("%s: %v", py, err)
		if last := lastLine(string(out)); last != "" {
			why += ": " + last
		}
		tried = append(tried, why)
	}
	return "", errors.New(strings.Join(tried, "; "))
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// A caller in another language, written from schemas/README.md and the
// .avsc files only, speaks the wire format: examples/python/bank_client.py
// (librdkafka with its default partitioner, so the worker also has to
// forward misrouted commands) opens an account, deposits, is refused a
// withdrawal, gets INVALID for an unknown type and the first reply again
// for a retried command id.
func TestPythonCaller(t *testing.T) {
	if testing.Short() {
		t.Skip("starts decider dev and a Python client")
	}
	py, err := python3WithModules()
	if err != nil {
		msg := fmt.Sprintf("no python3 that imports confluent_kafka and avro (%v): .ci/run must install %s (apt-get install -y %s)",
			err, strings.ReplaceAll(pythonPackages, " ", " and "), pythonPackages)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}

	listen, dir := freeAddr(t), t.TempDir()
	stop := dev(t, listen, dir, "")
	defer stop()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, filepath.Join(root, "examples", "python", "bank_client.py"),
		"--brokers", listen,
		"--schemas", filepath.Join(root, "schemas"), filepath.Join(root, "examples", "accounts"),
		"--script")
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
	cmd.WaitDelay = 10 * time.Second
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s did not finish in 2 minutes; its output:\n%s", cmd, out)
	}
	if err != nil {
		t.Fatalf("%s: %v; its output:\n%s", cmd, err, out)
	}
	t.Logf("%s (%s, %v):\n%s", filepath.Base(cmd.Path), py, time.Since(start).Round(time.Millisecond), out)

	// The point of the default partitioner: the commands landed on a
	// partition acc-py-1 does not hash to, and were decided all the same.
	home := topology.Partition([]byte("acc-py-1"), 4) // dev runs --partitions 4
	var steps, misrouted int
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var step struct {
			Partition *int32 `json:"partition"`
		}
		if json.Unmarshal([]byte(line), &step) != nil || step.Partition == nil {
			continue // not a step's line
		}
		steps++
		if *step.Partition != home {
			misrouted++
		}
	}
	if steps != 5 {
		t.Errorf("the script printed %d steps, want 5", steps)
	}
	if misrouted == 0 {
		t.Errorf("every command landed on partition %d, the one acc-py-1 hashes to: the worker's forwarding was not exercised", home)
	}
}
