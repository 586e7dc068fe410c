package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

const brokerUsage = `Runs franz-go's kfake, a Kafka-protocol broker in this process, with its
log persisted in --data-dir: transactions, consumer groups and compaction work
as on Kafka. For development and tests, not production.

Examples:
  decider broker
  decider broker --listen 127.0.0.1:19092 --data-dir /tmp/broker
`

func runBroker(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("broker")
	listen := fs.String("listen", "127.0.0.1:9092", "address the broker listens on")
	dataDir := fs.String("data-dir", ".decider", "directory of the broker's log (in <dir>/broker)")
	stateLog := fs.Int64("state-log-bytes", defaultStateLogBytes, "size at which the broker rewrites its log of group offsets and producer ids, stalling every request meanwhile (kfake's state.log.compact.bytes)")
	if err := parse(fs, args); err != nil {
		return err
	}
	c, err := startBroker(*listen, *dataDir, *stateLog)
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Fprintf(stdout, "broker listening on %s, data in %s\n", *listen, filepath.Join(*dataDir, "broker"))
	<-ctx.Done()
	return nil
}

// defaultStateLogBytes is kfake's own default: its log of group offsets
// and producer ids is rewritten whenever it grows past 10 MiB.
const defaultStateLogBytes = 10 << 20

// startBroker starts an embedded broker on listen with its log in
// dataDir/broker. Its log of group offsets and producer ids is rewritten,
// all requests waiting, whenever it grows past stateLogBytes (at 10 MiB,
// on a 2-core machine, transactions ended in 160–200 ms instead of 2 at
// those moments).
func startBroker(listen, dataDir string, stateLogBytes int64) (*kfake.Cluster, error) {
	host, portStr, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("--listen %q: %w", listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("--listen %q: bad port", listen)
	}
	dir := filepath.Join(dataDir, "broker")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	c, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.Ports(port),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			return net.Listen(network, net.JoinHostPort(host, strconv.Itoa(port)))
		}),
		kfake.DataDir(dir),
		kfake.BrokerConfigs(map[string]string{"state.log.compact.bytes": strconv.FormatInt(stateLogBytes, 10)}),
		kfake.GroupMinSessionTimeout(500*time.Millisecond), // Kafka's default minimum is 6s; tests fail over faster
	)
	if err != nil {
		return nil, fmt.Errorf("start broker on %s: %w", listen, err)
	}
	return c, nil
}
