package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/deciderhq/decider/client"
	"github.com/deciderhq/decider/examples/accounts"
	"github.com/deciderhq/decider/processor"
	"github.com/deciderhq/decider/processor/httpapi"
	"github.com/deciderhq/decider/statestore"
	"github.com/deciderhq/decider/topology"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

const runUsage = `Runs one worker of the example app "bank" against a Kafka cluster. It
creates missing topics, refuses to start on topics whose partition counts do
not fit, and joins the consumer group "bank": several run processes with
different data dirs share the partitions. The data dir holds the state store
and the instance id (which names the worker's transactional id); keep it
across restarts.

Examples:
  decider run --brokers localhost:9092 --data-dir /var/lib/decider
  DECIDER_BROKERS=k1:9092,k2:9092 decider run --data-dir ./w2 --http 127.0.0.1:8081
  DECIDER_SASL_PASSWORD=… decider run --brokers k1:9093 --tls-ca ca.pem --sasl-mechanism SCRAM-SHA-512 --sasl-user bank
`

// workerFlags are the flags shared by run and dev.
type workerFlags struct {
	dataDir    *string
	http       *string
	advertise  *string
	partitions *int
	instance   *string
	session    *time.Duration
	txnTimeout *time.Duration
	rebalance  *time.Duration
	restoreBuf *int
	stateCache *int64
	checkpoint *int64
	maxPoll    *int
	blockCache *int64
	wal        *bool
	logger     func() *slog.Logger
}

func addWorkerFlags(fs *flag.FlagSet, httpDefault string) workerFlags {
	return workerFlags{
		dataDir:    fs.String("data-dir", ".decider", "directory of the state store and instance id"),
		http:       fs.String("http", httpDefault, "address of the HTTP API (/v1/…, /healthz); empty: none"),
		advertise:  fs.String("advertise", "", "address other workers reach this one's HTTP API at (default: the --http address; the host name when it listens on every interface)"),
		partitions: fs.Int("partitions", int(topology.DefaultPartitions), "partitions of topics created for the app"),
		instance:   fs.String("instance", "", "stable instance id (default: generated once and kept in the data dir)"),
		session:    fs.Duration("session-timeout", 10*time.Second, "consumer group session timeout: a silent worker loses its partitions after it"),
		txnTimeout: fs.Duration("transaction-timeout", 10*time.Second, "transaction timeout: an open transaction is aborted after it"),
		rebalance:  fs.Duration("rebalance-timeout", time.Minute, "how long a rebalance waits for members to rejoin; must exceed a batch's time"),
		restoreBuf: fs.Int("restore-buffer", 8<<20, "bytes of snapshots a partition's restore holds before writing them to the state store as one table"),
		stateCache: fs.Int64("state-cache", 256<<20, "bytes of committed snapshots kept in memory in front of the state store (negative: none)"),
		checkpoint: fs.Int64("checkpoint-bytes", 1<<30, "bytes of committed snapshots the state store may fall behind by: the state cache writes each aggregate to it once per this many (a crashed worker reads up to twice this much of its changelog again)"),
		maxPoll:    fs.Int("max-poll-records", 10000, "most commands one transaction decides; a worker behind by a full poll decides the next one while the last one commits"),
		blockCache: fs.Int64("block-cache", 256<<20, "bytes of the state store's block cache"),
		wal:        fs.Bool("wal", false, "keep the state store's write-ahead log (without it, a crashed worker reads its last memtables' writes again from the changelog)"),
		logger:     logFlags(fs),
	}
}

func runWorker(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("run")
	kafkaOpts := kafkaFlags(fs)
	wf := addWorkerFlags(fs, "")
	if err := parse(fs, args); err != nil {
		return err
	}
	kafka, err := kafkaOpts()
	if err != nil {
		return err
	}
	return wf.run(ctx, kafka, nil)
}

// run creates the app's topics and runs a worker until ctx ends. started,
// if set, is called once the topics exist and the worker is starting.
func (wf workerFlags) run(ctx context.Context, kafka []kgo.Opt, started func()) error {
	log := wf.logger()
	app, err := accounts.App(int32(*wf.partitions))
	if err != nil {
		return err
	}
	if err := ensureTopics(ctx, kafka, app); err != nil {
		return err
	}
	if err := os.MkdirAll(*wf.dataDir, 0o755); err != nil {
		return err
	}
	instance := *wf.instance
	if instance == "" {
		if instance, err = instanceID(*wf.dataDir); err != nil {
			return err
		}
	}
	store, err := statestore.Open(filepath.Join(*wf.dataDir, "state"), &statestore.Options{RestoreBuffer: *wf.restoreBuf, CacheSize: *wf.blockCache, WAL: *wf.wal})
	if err != nil {
		return err
	}
	defer store.Close()
	var ln net.Listener
	advertise := *wf.advertise
	if *wf.http != "" {
		if ln, err = net.Listen("tcp", *wf.http); err != nil {
			return fmt.Errorf("--http %s: %w", *wf.http, err)
		}
		defer ln.Close()
		if advertise == "" {
			advertise = advertised(ln.Addr().(*net.TCPAddr))
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	w, err := processor.New(processor.Config{
		App: app, Store: store, Kafka: kafka, InstanceID: instance, Logger: log, Advertise: advertise, Registerer: reg,
		StateCacheBytes: *wf.stateCache, CheckpointBytes: *wf.checkpoint, MaxPollRecords: *wf.maxPoll, SessionTimeout: *wf.session, TransactionTimeout: *wf.txnTimeout, RebalanceTimeout: *wf.rebalance,
		AtPoint: crashPoint(),
	})
	if err != nil {
		return err
	}
	if ln != nil {
		stop, err := serveHTTP(ln, httpapi.Config{App: app, Worker: w, Logger: log, Gatherer: reg}, kafka)
		if err != nil {
			return err
		}
		defer stop()
	}
	if started != nil {
		started()
	}
	return w.Run(ctx)
}

// ensureTopics creates the app's missing topics with a client of its own.
func ensureTopics(ctx context.Context, kafka []kgo.Opt, app *topology.App) error {
	cl, err := connect(ctx, kafka)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return topology.EnsureTopics(ctx, kadm.NewClient(cl), app, topology.TopicOptions{})
}

// instanceID returns the instance id kept in dir, creating it on first use.
func instanceID(dir string) (string, error) {
	path := filepath.Join(dir, "instance-id")
	b, err := os.ReadFile(path)
	if err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	var r [6]byte
	_, _ = rand.Read(r[:])
	host, _ := os.Hostname()
	id := fmt.Sprintf("%s-%s", strings.ToLower(strings.SplitN(host, ".", 2)[0]), hex.EncodeToString(r[:]))
	if err := os.WriteFile(path, []byte(id+"\n"), 0o644); err != nil {
		return "", err
	}
	return id, nil
}

// advertised is the address other workers reach a listener on: its own,
// or the host name for a listener on every interface.
func advertised(addr *net.TCPAddr) string {
	if !addr.IP.IsUnspecified() {
		return addr.String()
	}
	host, err := os.Hostname()
	if err != nil {
		host = "localhost"
	}
	return net.JoinHostPort(host, strconv.Itoa(addr.Port))
}

// HTTP bounds: a request's wait is at most maxWait (httpapi.Config's
// MaxTimeout), and the server gives up on a client slower than these.
const maxWait = time.Minute

// serveHTTP serves the API of package httpapi (commands, reads, health,
// metrics) on ln until stop is called; cfg gets its client and bounds here.
func serveHTTP(ln net.Listener, cfg httpapi.Config, kafka []kgo.Opt) (stop func(), err error) {
	c, err := client.New(client.Config{App: cfg.App.Name(), Kafka: kafka, Source: "decider-http"})
	if err != nil {
		return nil, err
	}
	cfg.Client, cfg.MaxTimeout = c, maxWait
	api, err := httpapi.New(cfg)
	if err != nil {
		c.Close()
		return nil, err
	}
	log := cfg.Logger
	srv := &http.Server{
		Handler:           api,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      maxWait + 15*time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server", "err", err)
		}
	}()
	return func() {
		srv.Close()
		c.Close()
	}, nil
}

func crashPoint() func(processor.Point) {
	spec := os.Getenv("DECIDER_TEST_CRASH_AT")
	if spec == "" {
		return nil
	}
	name, nth, _ := strings.Cut(spec, ":")
	n, err := strconv.Atoi(nth)
	if err != nil || n < 1 {
		n = 1
	}
	var mu sync.Mutex
	return func(p processor.Point) {
		if string(p) != name {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if n--; n == 0 {
			fmt.Fprintf(os.Stderr, "decider: crashing at %s (DECIDER_TEST_CRASH_AT)\n", p)
			os.Exit(137)
		}
	}
}
