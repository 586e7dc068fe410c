package processor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"time"

	"github.com/deciderhq/decider/statestore"
	"github.com/deciderhq/decider/topology"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kprom"
)

// Config configures a Worker. App, Store, Kafka and InstanceID are required.
type Config struct {
	// App is what the worker runs: every aggregate type of it.
	App *topology.App
	// Store is the worker's local state; the worker does not close it.
	Store *statestore.Store
	// Kafka are the options to reach the cluster (kgo.SeedBrokers, TLS,
	// SASL). The worker adds its group, transaction and consuming options;
	// a kgo.FetchMaxBytes here replaces its default of 8 MiB.
	Kafka []kgo.Opt
	// InstanceID names this worker stably across restarts (keep it with the
	// data dir). Its transactional id is "<app>-<InstanceID>": a restarted
	// instance fences its former self, and two live instances must never
	// share one.
	InstanceID string
	// Logger receives lifecycle events at info and per-command detail at
	// debug. Default slog.Default().
	Logger *slog.Logger
	// MaxPollRecords bounds the commands of one transaction. Default 10000.
	MaxPollRecords int
	// MaxPayloadBytes is the largest command payload decided; larger ones
	// are INVALID (too_large), and their dead-letter copy holds no payload.
	// Default 900000, so that a forwarded or dead-lettered copy fits in a
	// record of the default 1 MB limit.
	MaxPayloadBytes int
	// MaxRecordBytes is the largest event or snapshot a command may write;
	// one that would be larger makes the command FAILED (too_large) instead
	// of a record the broker refuses, which would fail every transaction.
	// Keep it below the topics' max.message.bytes. Default 1000000.
	MaxRecordBytes int
	// StateCacheBytes bounds the cache of committed snapshots in front of
	// the state store: the memory of the ring it writes snapshots to, each
	// with its id and 28 bytes, and a quarter more room for one that grew
	// (its index adds ≈ 16 bytes an entry). A snapshot larger than a
	// sixteenth of it, or than 4 MiB, is not cached. Default 64 MiB;
	// negative disables it.
	StateCacheBytes int64
	// DedupeWindow is how many recent replies each aggregate's snapshot
	// keeps: a command id seen again within them gets its first reply again
	// and writes nothing. Default 32; negative disables it.
	DedupeWindow int
	// SessionTimeout of the consumer group membership. Default 10s: a worker
	// that stops heartbeating loses its partitions after this long.
	SessionTimeout time.Duration
	// TransactionTimeout is how long the coordinator lets a transaction stay
	// open before aborting it. It bounds how long a paused or partitioned
	// worker holds back the partitions it lost: their new owner waits for
	// its open transaction to end before restoring. Default 10s (Kafka
	// Streams' exactly-once default); it must exceed the time a batch takes.
	TransactionTimeout time.Duration
	// RebalanceTimeout is how long a rebalance waits for every member to
	// rejoin; a member killed during a rebalance holds the group up for
	// this long. It must exceed the time a batch takes. Default 60s.
	RebalanceTimeout time.Duration
	// Advertise is the address (host:port) of this worker's HTTP API. It is
	// shared with the group, so that every worker knows where each
	// partition's owner answers reads (Owner). Empty: not shared.
	Advertise string
	// Registerer, if set, gets the worker's Prometheus metrics (decider_*,
	// see metrics.go) and franz-go's client metrics (decider_kafka_*,
	// plugin/kprom). A Registerer serves one worker.
	Registerer prometheus.Registerer
	// AtPoint, if set, is called at the named points of the protocol. It
	// is a test seam: the crash tests exit the process there.
	AtPoint func(Point)
}

// Point names a place in the transaction and recovery protocol.
type Point string

// The points at which Config.AtPoint is called.
const (
	AfterPoll    Point = "after-poll"    // a batch was polled, nothing produced yet
	AfterProduce Point = "after-produce" // every record of the batch is written, the transaction is open
	AfterCommit  Point = "after-commit"  // the transaction committed, Pebble not written yet
	MidRestore   Point = "mid-restore"   // a restore wrote a batch of snapshots and its checkpoint
)

func (w *Worker) at(p Point) {
	if w.cfg.AtPoint != nil {
		w.cfg.AtPoint(p)
	}
}

// Worker is one member of an app's consumer group: it owns some partitions
// of the commands topics and turns their commands into events, snapshots
// and replies, one Kafka transaction per poll.
type Worker struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	cache   *stateCache
	sess    *kgo.GroupTransactSession // set under mu, for Ready
	adm     *kadm.Client
	topics  *topicCache

	mu      sync.Mutex                 // guards parts, owners and applied
	parts   map[partitionKey]*assigned // partitions currently assigned
	owners  map[partitionKey]string    // advertised address of every partition's owner, as of the latest rebalance
	applied chan struct{}              // closed (and replaced) when Pebble was written
	locks   sync.Map                   // partitionKey → *sync.Mutex: serialises Pebble writes of a partition
	wg      sync.WaitGroup             // restore goroutines
	arenas  arenas                     // for the partitions of a batch

	deciders chan func() // the session's pool deciding the partitions of a batch
}

type partitionKey struct {
	topic     string
	partition int32
}

// ErrFenced: the worker's producer was fenced or is otherwise unusable: its
// transaction was aborted by the coordinator (it outlived
// TransactionTimeout), another process took its transactional id, or the
// broker answered with an error the producer cannot recover from. Run
// handles it by rejoining with a new producer.
var ErrFenced = errors.New("producer fenced or unusable")

// New checks cfg and returns a worker. It connects to nothing: Run does.
func New(cfg Config) (*Worker, error) {
	switch {
	case cfg.App == nil:
		return nil, errors.New("processor: Config.App is required")
	case cfg.Store == nil:
		return nil, errors.New("processor: Config.Store is required")
	case cfg.InstanceID == "":
		return nil, errors.New("processor: Config.InstanceID is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxPollRecords <= 0 {
		cfg.MaxPollRecords = 10000
	}
	if cfg.MaxPayloadBytes <= 0 {
		cfg.MaxPayloadBytes = 900000
	}
	if cfg.MaxRecordBytes <= snapshotOverhead {
		cfg.MaxRecordBytes = 1000000
	}
	if cfg.StateCacheBytes == 0 {
		cfg.StateCacheBytes = 64 << 20
	}
	if cfg.DedupeWindow == 0 {
		cfg.DedupeWindow = 32
	}
	if cfg.SessionTimeout <= 0 {
		cfg.SessionTimeout = 10 * time.Second
	}
	if cfg.TransactionTimeout <= 0 {
		cfg.TransactionTimeout = 10 * time.Second
	}
	if cfg.RebalanceTimeout <= 0 {
		cfg.RebalanceTimeout = time.Minute
	}
	w := &Worker{
		cfg:     cfg,
		log:     cfg.Logger.With("app", cfg.App.Name(), "instance", cfg.InstanceID),
		parts:   map[partitionKey]*assigned{},
		applied: make(chan struct{}),
	}
	w.cache = newStateCache(cfg.StateCacheBytes)
	w.metrics = newMetrics(cfg.Registerer, cfg.Store, w.cache, w.Ready)
	return w, nil
}

// TransactionalID returns the transactional id the worker produces with.
func (w *Worker) TransactionalID() string { return w.cfg.App.Name() + "-" + w.cfg.InstanceID }

// Run joins the group and processes commands until ctx is cancelled or a
// fatal error (topics that do not fit the app, a state store that cannot be
// written). On cancel it finishes the batch in hand, commits it, and leaves
// the group.
//
// A fenced producer (the coordinator aborted a transaction that outlived
// TransactionTimeout, e.g. while the process was paused, or another process
// started with the same InstanceID) does not stop Run: the worker leaves
// the group, re-initialises its producer and joins again, as Kafka Streams
// does. Two live processes with one InstanceID fence each other in turn and
// make slow progress; the logs say so at warn.
func (w *Worker) Run(ctx context.Context) error {
	const firstBackoff = 500 * time.Millisecond
	for backoff := firstBackoff; ; backoff = min(2*backoff, 30*time.Second) {
		began := time.Now()
		err := w.session(ctx)
		if !errors.Is(err, ErrFenced) || ctx.Err() != nil {
			return err
		}
		if time.Since(began) > time.Minute {
			backoff = firstBackoff // fenced after a good run: not a fencing loop
		}
		w.log.Warn("fenced; rejoining with a new producer", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
	}
}

// session runs one group membership with one transactional producer.
func (w *Worker) session(ctx context.Context) error {
	// Fetched commands wait in the client until polled, decoded: a bound
	// on a fetch bounds them (50 MiB by default, which made 240 MiB of
	// records and buffers that every garbage collection walked). 8 MiB
	// holds more than one poll's commands.
	opts := append([]kgo.Opt{kgo.FetchMaxBytes(8 << 20)}, w.cfg.Kafka...)
	if w.cfg.Registerer != nil {
		// kprom registers its collectors with the session's client and
		// unregisters them when it closes, so each session gets its own.
		opts = append(opts, kgo.WithHooks(kprom.NewMetrics("decider", kprom.Subsystem("kafka"), kprom.Registerer(w.cfg.Registerer))))
	}
	sess, err := kgo.NewGroupTransactSession(append(opts,
		kgo.ConsumerGroup(w.cfg.App.Group()),
		kgo.ConsumeTopics(w.cfg.App.CommandTopics()...),
		kgo.TransactionalID(w.TransactionalID()),
		kgo.TransactionTimeout(w.cfg.TransactionTimeout),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.SessionTimeout(w.cfg.SessionTimeout),
		kgo.HeartbeatInterval(w.cfg.SessionTimeout/4),
		kgo.RebalanceTimeout(w.cfg.RebalanceTimeout),
		// A fetch waits at most this long for new commands; a partition
		// resumed after its restore joins the next fetch, so this bounds
		// its first command's extra latency too.
		kgo.FetchMaxWait(500*time.Millisecond),
		kgo.OnPartitionsAssigned(w.onAssigned),
		kgo.OnPartitionsRevoked(w.onRevoked),
		kgo.OnPartitionsLost(w.onRevoked),
		kgo.Balancers(ownersBalancer{kgo.CooperativeStickyBalancer(), w}),
	)...)
	if err != nil {
		return fmt.Errorf("worker %s: %w", w.TransactionalID(), err)
	}
	w.mu.Lock()
	w.sess = sess
	w.mu.Unlock()
	w.adm = kadm.NewClient(sess.Client())
	w.topics = newTopicCache(w.adm, w.log)
	defer func() {
		w.mu.Lock()
		w.stopRestores() // the session's revoke callback may be skipped
		w.sess = nil
		w.mu.Unlock()
		sess.Close() // leaves the group
		w.wg.Wait()
	}()
	if err := topology.VerifyTopics(ctx, w.adm, w.cfg.App); err != nil {
		return fmt.Errorf("worker %s: %w", w.TransactionalID(), err)
	}
	w.log.Info("worker started", "txn_id", w.TransactionalID(), "topics", w.cfg.App.CommandTopics())
	// The partitions of a batch are decided by a pool of goroutines that
	// lives as long as the session, one per CPU: a goroutine started for
	// each partition of each batch grew its stack anew every time (2% of
	// the worker's CPU at 10k commands/s, in stack copies).
	w.deciders = make(chan func())
	var pool sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		pool.Go(func() {
			for f := range w.deciders {
				f()
			}
		})
	}
	defer func() {
		close(w.deciders)
		pool.Wait()
	}()
	for {
		fetches := sess.PollRecords(ctx, w.cfg.MaxPollRecords)
		if ctx.Err() != nil || fetches.IsClientClosed() {
			w.log.Info("worker stopping")
			return nil
		}
		fetches.EachError(func(t string, p int32, err error) {
			w.log.Warn("fetch failed", "topic", t, "partition", p, "err", err)
		})
		fetches.EachPartition(func(p kgo.FetchTopicPartition) {
			if n := len(p.Records); n > 0 {
				w.metrics.setLag(p.Topic, p.Partition, p.HighWatermark-p.Records[n-1].Offset-1)
			}
		})
		if fetches.NumRecords() == 0 {
			continue
		}
		if err := w.transact(ctx, fetches); err != nil {
			return err
		}
	}
}

// isFenced reports the errors after which this producer can never commit.
func isFenced(err error) bool {
	return errors.Is(err, kerr.ProducerFenced) || errors.Is(err, kerr.InvalidProducerEpoch) ||
		errors.Is(err, kerr.TransactionalIDAuthorizationFailed)
}

// transact decides one poll's commands and commits their outputs in one
// transaction; see the package doc for the protocol.
func (w *Worker) transact(ctx context.Context, fetches kgo.Fetches) error {
	w.at(AfterPoll)
	began := time.Now()
	if err := w.sess.Begin(); err != nil {
		// Only a producer left in a fatal state refuses to begin.
		return fmt.Errorf("%w: begin transaction: %w", ErrFenced, err)
	}
	b := newBatch(w)
	var wg sync.WaitGroup
	fetches.EachPartition(func(ftp kgo.FetchTopicPartition) {
		if len(ftp.Records) == 0 {
			return
		}
		wg.Add(1)
		w.deciders <- func() {
			defer wg.Done()
			b.run(ctx, ftp)
		}
	})
	wg.Wait()

	// The batch is finished even when ctx was cancelled meanwhile (SIGTERM):
	// ending it gets a context of its own.
	endCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	// Every record must be acknowledged before deciding to commit: a record
	// that failed (its promise reports it) must abort the transaction, or
	// the offsets would commit without it. End would flush too, but only
	// after the decision.
	try := kgo.TryCommit
	if err := w.sess.Client().Flush(endCtx); err != nil {
		b.abort(abortProduceFailed, fmt.Errorf("flush: %w", err))
		// Records that could not be written in time (a partition without
		// a leader) are failed, so that their promises run.
		_ = w.sess.Client().AbortBufferedRecords(endCtx)
	}
	b.produced.Wait()
	defer b.release() // after the overlays are written or dropped
	w.at(AfterProduce)
	abortKind, abortErr := b.abortReason()
	if abortErr != nil {
		w.log.Warn("aborting transaction", "reason", abortErr)
		try = kgo.TryAbort
	}
	committed, err := w.sess.End(endCtx, try)
	w.metrics.txnDuration.Observe(time.Since(began).Seconds())
	switch {
	case committed:
		w.metrics.transactions.WithLabelValues("committed").Inc()
	case isFenced(err):
		abortKind = "fenced"
	case try == kgo.TryCommit:
		abortKind = "commit_failed"
	}
	if !committed {
		w.metrics.transactions.WithLabelValues("aborted").Inc()
		w.metrics.aborts.WithLabelValues(abortKind).Inc()
	}
	if err != nil {
		if isFenced(err) {
			return fmt.Errorf("%w: %w", ErrFenced, err)
		}
		w.log.Warn("transaction failed; redoing from the committed offsets", "err", err)
		// An EndTxn whose outcome is unknown leaves the client in the
		// transaction until it is told to abort; the abort re-initialises the
		// producer id, which fences whatever the broker still holds open.
		if err := w.sess.Client().EndTransaction(endCtx, kgo.TryAbort); err != nil {
			if isFenced(err) {
				return fmt.Errorf("%w: %w", ErrFenced, err)
			}
			w.log.Warn("abort after a failed transaction", "err", err)
		}
	}
	if !committed {
		// The overlays are dropped with b; the session rewound to the
		// committed offsets. A commit that was tried and did not report
		// success may still have happened (an EndTxn whose answer was lost;
		// franz-go then retries as an abort and reports no error), so the
		// local state of the batch's partitions is caught up from the
		// changelog, which holds the truth either way, before they go on.
		if err != nil || try == kgo.TryCommit {
			b.restoreAgain()
		}
		return nil
	}
	w.at(AfterCommit)
	b.committed(fetches.NumRecords())
	if err := b.apply(); err != nil {
		return fmt.Errorf("state store write after commit (restart restores it from the changelog): %w", err)
	}
	w.wrote()
	return nil
}

// onAssigned starts restoring every newly assigned partition. Commands of a
// partition are not decided before its restore is done.
func (w *Worker) onAssigned(_ context.Context, cl *kgo.Client, assigned map[string][]int32) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for topic, ps := range assigned {
		agg, ok := w.cfg.App.ByCommandTopic(topic)
		if !ok {
			continue
		}
		for _, p := range ps {
			w.assign(cl, agg, p, true)
		}
		w.log.Info("partitions assigned", "topic", topic, "partitions", ps)
	}
	w.countOwned()
}

// assign starts an assignment of partition p of agg's commands topic and
// its restore. On a new assignment the partition's fetching is paused until
// the restore is done, so that no batch holds its commands (and keeps a
// transaction open) while it restores. Called with w.mu held.
func (w *Worker) assign(cl *kgo.Client, agg *topology.Aggregate, p int32, pause bool) {
	a := newAssigned(w, cl, agg, p)
	if old := w.parts[a.key]; old != nil {
		old.cancel() // its revoke was not seen (franz-go skips some)
	}
	w.parts[a.key] = a
	if pause {
		cl.PauseFetchPartitions(map[string][]int32{a.key.topic: {p}})
	}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		a.restore()
	}()
}

// reassign replaces a current assignment by a new one, which restores the
// partition again before its commands go on.
func (w *Worker) reassign(a *assigned) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.parts[a.key] != a {
		return // revoked meanwhile
	}
	a.cancel()
	w.assign(a.cl, a.agg, a.key.partition, false) // a short catch-up: batches wait for it
}

// stopRestores cancels every assignment and forgets it. Called with w.mu
// held.
func (w *Worker) stopRestores() {
	for k, a := range w.parts {
		a.cancel()
		delete(w.parts, k)
		w.metrics.forget(k.topic, k.partition)
	}
	w.countOwned()
}

// onRevoked forgets revoked or lost partitions and stops their restores.
// Their local state stays: it is a valid prefix for when they return.
func (w *Worker) onRevoked(_ context.Context, _ *kgo.Client, revoked map[string][]int32) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for topic, ps := range revoked {
		for _, p := range ps {
			k := partitionKey{topic, p}
			if a, ok := w.parts[k]; ok {
				a.cancel()
				delete(w.parts, k)
				w.metrics.forget(k.topic, k.partition)
			}
		}
		w.log.Info("partitions revoked", "topic", topic, "partitions", ps)
	}
	w.countOwned()
}

// partition returns the current assignment of a partition, if any.
func (w *Worker) partition(topic string, p int32) (*assigned, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	a, ok := w.parts[partitionKey{topic, p}]
	return a, ok
}

// lock returns the mutex that serialises Pebble writes of a partition
// across its assignments.
func (w *Worker) lock(k partitionKey) *sync.Mutex {
	m, _ := w.locks.LoadOrStore(k, &sync.Mutex{})
	return m.(*sync.Mutex)
}
