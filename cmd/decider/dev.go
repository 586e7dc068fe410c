package main

import (
	"context"
	"fmt"
	"io"

	"github.com/twmb/franz-go/pkg/kgo"
)

const devUsage = `Starts everything on this machine with zero setup: an embedded
Kafka-compatible broker (kfake, its log in <data-dir>/broker), the topics of
the example app "bank", and one worker (its state in <data-dir>/state).
Restart it with the same data dir and every balance is still there.

Examples:
  go run ./cmd/decider dev
  decider dev --listen 127.0.0.1:19092 --data-dir /tmp/bank
`

func runDev(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("dev")
	listen := fs.String("listen", "127.0.0.1:9092", "address of the embedded broker")
	wf := addWorkerFlags(fs, "127.0.0.1:8080")
	if err := parse(fs, args); err != nil {
		return err
	}
	c, err := startBroker(*listen, *wf.dataDir, defaultStateLogBytes)
	if err != nil {
		return err
	}
	defer c.Close()
	return wf.run(ctx, []kgo.Opt{kgo.SeedBrokers(*listen)}, func() {
		fmt.Fprintf(stdout, `decider dev: broker on %[1]s, worker of app "bank", data in %[2]s

Try, in another terminal:
  go run ./cmd/decider send --brokers %[1]s --id acc-1 --type OpenAccount --data '{"owner":"ada"}'
  go run ./cmd/decider send --brokers %[1]s --id acc-1 --type Deposit --data '{"amount":100}'
  go run ./cmd/decider send --brokers %[1]s --id acc-1 --type Withdraw --data '{"amount":500}'
`, *listen, *wf.dataDir)
		if *wf.http != "" {
			fmt.Fprintf(stdout, `
or over HTTP:
  curl -s -X POST http://%[1]s/v1/account/acc-2/commands -d '{"type":"OpenAccount","data":{"owner":"bob"}}'
  curl -s http://%[1]s/v1/account/acc-1
`, *wf.http)
		}
		fmt.Fprintf(stdout, "\nStop with Ctrl-C; start again with the same --data-dir and the balances are kept.\n")
	})
}
