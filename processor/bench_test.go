package processor

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/deciderhq/decider/examples/accounts"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// BenchmarkDecideLoop is the worker's whole loop on a broker in the test
// process: each iteration produces a batch of deposits to accounts the
// store holds and waits until the worker committed them (decode, load,
// decide, evolve, encode, one transaction, the Pebble write). The broker and
// the producer share the CPU with the worker; `decider bench` measures the
// worker alone against the bare loop.
func BenchmarkDecideLoop(b *testing.B) {
	const accountsN, batch = 10000, 1000
	e := newEnv(b, 4)
	e.start(b.TempDir(), "bench")
	adm := kadm.NewClient(e.cl)
	sent := 0
	send := func(cmd func(i int) any) {
		rs := make([]*kgo.Record, batch)
		for i := range rs {
			n := sent + i
			rs[i] = e.command("acc-"+strconv.Itoa(n%accountsN), "c-"+strconv.Itoa(n), cmd(n))
		}
		e.produce(rs...)
		sent += batch
		waitCommitted(b, adm, e.app.Group(), int64(sent))
	}
	for range accountsN / batch {
		send(func(i int) any { return accounts.OpenAccount{Owner: "o-" + strconv.Itoa(i)} })
	}
	for b.Loop() {
		send(func(int) any { return accounts.Deposit{Amount: 10} })
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "commands/s")
}

// waitCommitted waits until the group's committed offsets add up to n.
func waitCommitted(b *testing.B, adm *kadm.Client, group string, n int64) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		offs, err := adm.FetchOffsets(ctx, group)
		if err != nil {
			b.Fatal(err)
		}
		var sum int64
		offs.Each(func(o kadm.OffsetResponse) { sum += o.At })
		if sum >= n {
			return
		}
		time.Sleep(time.Millisecond) // offsets are polled: the broker has nothing to wait on
	}
}
