package main

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"testing"
	"time"

	"github.com/deciderhq/decider/examples/accounts"
	"github.com/deciderhq/decider/processor"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Recovery at named crash points (DESIGN.md §4): a worker process exits
// abruptly after polling a batch, after producing it, after committing it but
// before writing Pebble, and in the middle of a restore; restarted on the same
// data dir it goes on, and every command ends with exactly the model's reply.
func TestCrashPoints(t *testing.T) {
	if testing.Short() {
		t.Skip("crash points need real processes")
	}
	c := newChaos(t, 2)
	sent := 0
	crashAt := func(w *proc, spec string) {
		t.Helper()
		w.kill() // the previous run
		w.env = []string{"DECIDER_TEST_CRASH_AT=" + spec}
		if err := w.run(); err != nil {
			t.Fatal(err)
		}
		stop := c.send(100)
		select {
		case <-w.done:
		case <-time.After(60 * time.Second):
			t.Fatalf("worker did not crash at %s:\n%s", spec, w.logTail())
		}
		sent += stop()
		w.mu.Lock()
		w.exits = 0 // this exit was asked for
		w.mu.Unlock()
		w.env = nil
		if err := w.run(); err != nil {
			t.Fatal(err)
		}
	}

	w := c.startWorker()
	for _, p := range []processor.Point{processor.AfterPoll, processor.AfterProduce, processor.AfterCommit} {
		crashAt(w, string(p)+":3")
	}

	// Mid-restore: more snapshots in a partition than one restore chunk
	// (--restore-buffer 64 KiB: a few hundred), then a fresh data dir that
	// crashes after the first chunk.
	opens := 9000
	cl, err := kgo.NewClient(append(c.kafka, kgo.RecordPartitioner(kgo.ManualPartitioner()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for i := range opens {
		cl.Produce(context.Background(), c.record(fmt.Sprintf("bulk-%d", i), fmt.Sprintf("bulk-%d", i), accounts.OpenAccount{Owner: "b"}), nil)
	}
	if err := cl.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	sent += opens
	c.readTopic(c.topics.Replies, sent) // the worker decided them all
	w.term()
	fresh := c.startEnv("fresh", []string{"DECIDER_TEST_CRASH_AT=" + string(processor.MidRestore)}, append(c.workerArgs("fresh"), "--restore-buffer", "65536")...)
	c.workers = append(c.workers, fresh)
	select {
	case <-fresh.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("worker did not crash mid-restore:\n%s", fresh.logTail())
	}
	fresh.mu.Lock()
	fresh.exits = 0
	fresh.mu.Unlock()
	fresh.env = nil
	if err := fresh.run(); err != nil {
		t.Fatal(err)
	}
	// The restart went on from the checkpoint the crashed restore wrote.
	waitLog(t, fresh, regexp.MustCompile(`partition restored.* from=[1-9]`))
	// Deposits to restored accounts must find them open.
	for i := range 50 {
		id := fmt.Sprintf("bulk-%d", i*150)
		cl.Produce(context.Background(), c.record(id, fmt.Sprintf("dep-%d", i), accounts.Deposit{Amount: 7}), nil)
	}
	if err := cl.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	sent += 50
	c.check(sent)
	if n := c.selfExits(); n > 0 {
		t.Errorf("%d unexpected worker exits", n)
	}
}

// waitLog waits until the process's log matches re.
func waitLog(t *testing.T, p *proc, re *regexp.Regexp) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(p.log)
		if re.Match(b) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never logged %s:\n%s", p.name, re, p.logTail())
		}
		time.Sleep(50 * time.Millisecond) // a log file has no condition to wait on
	}
}
