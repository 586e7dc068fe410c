package statestore

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"testing"
)

// The writes of a crash test's child: batch i (from 1) goes to partition
// i%crashPartitions, writes the value i to two of its keys and moves its
// checkpoint to i+1.
const (
	crashPartitions = 4
	crashKeys       = 64
	crashValueBytes = 1024
)

func crashBatchKeys(i int) [2]string {
	return [2]string{fmt.Sprintf("k%d", i*7%crashKeys), fmt.Sprintf("k%d", i*13%crashKeys)}
}

func crashValue(i int) []byte {
	v := make([]byte, crashValueBytes)
	copy(v, strconv.Itoa(i)+";")
	return v
}

// A store without its write-ahead log, killed (SIGKILL) while a child
// process applies batch after batch to it, reopens as a prefix of what was
// applied to each partition: for its checkpoint c, every key holds what the
// last batch before c wrote to it, and nothing of a batch at or after c.
// Memtables small enough to be flushed many times before the kill make
// the on-disk state more than the empty prefix.
func TestCrashKeepsPrefix(t *testing.T) {
	if dir := os.Getenv("STATESTORE_CRASH_CHILD"); dir != "" {
		crashChild(dir)
		return
	}
	if testing.Short() {
		t.Skip("kills a child process")
	}
	dir := t.TempDir()
	child := exec.Command(os.Args[0], "-test.run=^TestCrashKeepsPrefix$")
	child.Env = append(os.Environ(), "STATESTORE_CRASH_CHILD="+dir)
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer child.Process.Kill() // also when the test fails before the kill below
	lines := bufio.NewScanner(out)
	applied := 0
	for applied < 3000 && lines.Scan() {
		if applied, err = strconv.Atoi(lines.Text()); err != nil {
			t.Fatalf("child said %q", lines.Text())
		}
	}
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait() // killed: its error says so
	if applied < 3000 {
		t.Fatalf("the child stopped after %d batches", applied)
	}

	s, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	flushed := 0
	for p := range crashPartitions {
		c, err := s.Checkpoint("account", int32(p))
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]int{} // the model: the last batch before c of each key
		for i := 1; int64(i) < c; i++ {
			if i%crashPartitions == p {
				for _, k := range crashBatchKeys(i) {
					want[k] = i
				}
			}
		}
		if len(want) > 0 {
			flushed++
		}
		t.Logf("partition %d: checkpoint %d after at least %d batches applied", p, c, applied)
		for k := range crashKeys {
			key := fmt.Sprintf("k%d", k)
			v, err := s.Get("account", int32(p), key)
			switch {
			case err == ErrNotFound && want[key] == 0:
			case err != nil:
				t.Errorf("partition %d, checkpoint %d: %s: %v, want the value of batch %d", p, c, key, err, want[key])
			case string(v) != string(crashValue(want[key])):
				t.Errorf("partition %d, checkpoint %d: %s holds %.8q, want the value of batch %d", p, c, key, v, want[key])
			}
		}
	}
	if flushed == 0 {
		t.Errorf("no partition has a checkpoint after %d batches: nothing was flushed, the test proves nothing", applied)
	}
}

// crashChild applies batches to the store in dir until it is killed,
// printing the number of each batch applied.
func crashChild(dir string) {
	s, err := Open(dir, &Options{MemTableSize: 1 << 20})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	w := bufio.NewWriter(os.Stdout)
	for i := 1; ; i++ {
		o := NewOverlay("account", int32(i%crashPartitions), 2)
		for _, k := range crashBatchKeys(i) {
			o.Put(k, Entry{Value: crashValue(i)})
		}
		if err := s.Apply(Commit{o, int64(i + 1)}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Fprintln(w, i)
		_ = w.Flush()
	}
}
