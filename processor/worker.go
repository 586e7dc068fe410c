package processor

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/deciderhq/decider/internal/kafkatxn"
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
	// a kgo.FetchMaxBytes here replaces its default of 8 MiB. The worker
	// adds a transaction's offsets as KIP-890 part 2 does when the
	// cluster's transaction.version is 2 or more: a kgo.MaxVersions that
	// keeps Produce below v12, or EndTxn or TxnOffsetCommit below v5, is
	// not supported on such a cluster.
	Kafka []kgo.Opt
	// InstanceID names this worker stably across restarts (keep it with the
	// data dir). Its transactional id is "<app>-<InstanceID>": a restarted
	// instance fences its former self, and two live instances must never
	// share one.
	InstanceID string
	// Logger receives lifecycle events at info and per-command detail at
	// debug. Default slog.Default().
	Logger *slog.Logger
	// MaxPollRecords bounds the commands of one transaction. A worker that
	// polls this many while the last batch's records are flushed is behind,
	// and decides them while that transaction ends (see the package doc).
	// Default 10000.
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
	// the state store, which it writes back to the store later (see
	// CheckpointBytes): the memory of the ring it writes snapshots to, each
	// with its id and 32 bytes, and half as much more room for one that grew
	// (its index adds 32 to 64 bytes an entry). A snapshot larger than a
	// sixteenth of it, or than 4 MiB, is not cached (it is written to the
	// store at its commit). Default 256 MiB; negative disables it: every
	// snapshot is then written to the store at its commit.
	StateCacheBytes int64
	// CheckpointBytes is how far the state store may fall behind the
	// commits, in bytes of committed snapshots: the state cache writes its
	// snapshots to the store once per aggregate per this many bytes (see
	// checkpoints.go), and a worker restarted after a crash, or a
	// partition that comes back after a revoke, reads up to about twice
	// this much of the changelog again. Default 1 GiB.
	CheckpointBytes int64
	// IDFilterBytes is the size of the Bloom filter of the aggregate ids
	// each assigned partition holds in the store, filled after its restore,
	// with which the first command of a new aggregate does not look it up
	// in Pebble (every memtable and level, to find nothing). Its memory is
	// this times the partitions owned, whatever the number of aggregates:
	// with more than IDFilterBytes ids in a partition it skips fewer
	// lookups. Default 256 KiB; negative disables it.
	IDFilterBytes int
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
// and replies, one Kafka transaction per batch of commands polled.
type Worker struct {
	cfg         Config
	log         *slog.Logger
	metrics     *metrics
	cache       *stateCache
	checkpoints checkpoints       // of the state store, as the cache is written to it
	storeWrite  storeWrite        // the one under way, or the last (see newStoreWrite)
	storeFailed bool              // a write to the store failed: nothing more is written (see storeWrite.commit)
	sess        *kafkatxn.Session // set under mu, for Ready
	adm         *kadm.Client
	topics      *topicCache

	mu           sync.Mutex                 // guards parts, owners, applied and appliedTaken
	parts        map[partitionKey]*assigned // partitions currently assigned
	owners       map[partitionKey]string    // advertised address of every partition's owner, as of the latest rebalance
	applied      chan struct{}              // closed (and replaced) when Pebble was written, if taken
	appliedTaken bool                       // applied was handed to a reader
	locks        sync.Map                   // partitionKey → *sync.Mutex: serialises Pebble writes of a partition
	wg           sync.WaitGroup             // restore goroutines
	arenas       arenas                     // for the partitions of a batch

	deciders chan<- func() // the session's pool deciding the partitions of a batch
	ender    chan<- func() // the session's goroutine ending transactions (Worker.end)
	offsets  chan<- func() // the session's goroutine putting a batch's offsets in its transaction
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
		// 64 MiB until the ninth round: after the bench's flat-out run
		// (100k accounts, their dedupe windows half full), it held little
		// more than half of the aggregates the 10k/s run then asked for,
		// and the others were read from Pebble's memtables, in the cycle.
		// 128 MiB until the fourteenth: once those windows filled (3.3M
		// commands over the 100k accounts), a fifth of the lookups at 50k
		// commands/s missed it.
		cfg.StateCacheBytes = 256 << 20
	}
	if cfg.CheckpointBytes <= 0 {
		// 256 MiB until the fourteenth round: with the 256 MiB cache, the
		// sweep then passed as many bytes of the ring as each batch put,
		// and its Pebble writes (and their compactions) were what decider
		// could not keep up with at 50k commands/s.
		cfg.CheckpointBytes = 1 << 30
	}
	if cfg.IDFilterBytes == 0 {
		cfg.IDFilterBytes = 256 << 10
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
	sess, err := kafkatxn.New(append(opts,
		kgo.ConsumeTopics(w.cfg.App.CommandTopics()...),
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
		kgo.Balancers(ownersBalancer{kgo.CooperativeStickyBalancer(), w}),
	), w.cfg.App.Group(), w.TransactionalID(), w.log, w.onRevoked)
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
	// lives as long as the session, one per CPU, and transactions are
	// ended by one goroutine that does too, with one beside it for the
	// offsets: a goroutine started for each partition of each batch grew
	// its stack anew every time (2% of the worker's CPU at 10k commands/s,
	// in stack copies), and one for each end and its offsets took ≈ 15 µs
	// a transaction in stack copies (a tenth of the worker's own CPU at 1k
	// commands/s, a transaction each).
	var pool sync.WaitGroup
	w.deciders = goroutines(&pool, runtime.GOMAXPROCS(0))
	w.ender = goroutines(&pool, 1)
	w.offsets = goroutines(&pool, 1)
	defer func() {
		close(w.deciders)
		close(w.ender)
		close(w.offsets)
		pool.Wait()
	}()
	err = w.loop(ctx)
	// Before the group is left: the partitions are still this session's,
	// so their dirty snapshots and checkpoints are written (see
	// checkpoints), and the next start restores nothing.
	return errors.Join(err, w.flush())
}

// goroutines starts n goroutines, counted in wg, that run the functions
// sent on the returned channel until it is closed.
func goroutines(wg *sync.WaitGroup, n int) chan<- func() {
	c := make(chan func())
	for range n {
		wg.Go(func() {
			for f := range c {
				f()
			}
		})
	}
	return c
}

// loop polls and decides batches until ctx is cancelled or the session
// fails. While one batch's transaction ends (its records flushed, its
// offsets committed) in the background, the commands polled meanwhile are
// decided: those gathered during the flush at once, those that come during
// its EndTxn as they come (follow); once that end is known, what the
// client buffered meanwhile joins the next batch (topUp), which then
// begins, and only then is the batch that committed applied to the state
// cache and store, beside the next one's flush.
func (w *Worker) loop(ctx context.Context) error {
	var ending *batch // whose transaction is ending; nil for none
	for {
		var committed *batch // the batch before, committed and not applied yet; nil for none
		var fetches kgo.Fetches
		if ending == nil {
			fetches = w.sess.Client().PollRecords(ctx, w.cfg.MaxPollRecords)
		} else {
			fetches = ending.gather(w.sess.Client(), w.cfg.MaxPollRecords)
		}
		stopping := ctx.Err() != nil || fetches.IsClientClosed()
		var b *batch
		if !stopping {
			w.observe(fetches)
			if fetches.NumRecords() > 0 {
				b = w.decide(ctx, fetches, ending)
			}
		}
		if ending != nil {
			if !stopping {
				if b = w.follow(ctx, ending, b); b != nil {
					fetches = b.fetches
				}
			}
			var err error
			if b, committed, err = w.settle(ending, b, fetches); err != nil {
				return err
			}
			ending = nil
			if !stopping && ctx.Err() == nil {
				w.topUp(ctx, committed, b)
			}
		}
		if stopping || ctx.Err() != nil {
			// A batch decided but not begun is dropped: its commands are
			// not committed, and whoever owns them next decides them.
			b.release()
			w.log.Info("worker stopping")
			return w.applyCommitted(committed)
		}
		if b == nil {
			if err := w.applyCommitted(committed); err != nil {
				return err
			}
			continue
		}
		if err := w.sess.Client().BeginTransaction(); err != nil {
			b.release()
			// Only a producer left in a fatal state refuses to begin.
			return errors.Join(fmt.Errorf("%w: begin transaction: %w", ErrFenced, err), w.applyCommitted(committed))
		}
		b.pollCtx, b.stopPoll = context.WithCancel(ctx)
		b.endingCtx, b.ended = context.WithCancel(ctx)
		b.done = make(chan struct{})
		w.ender <- func() { // free once it has tallied the end before, which is settled
			w.end(ctx, b)
			if b.committed {
				// After done: off the cycle, and off the loop. (Tallied
				// before done until the seventeenth round, it was in the
				// cycle, 15 µs a transaction at 10k commands/s; in the
				// loop's apply, it took from the deciding at 50k/s.) It
				// reads b's tallies, not its arenas, which the loop may
				// be giving back meanwhile.
				b.tallyCommitted(b.fetches.NumRecords())
			}
		}
		ending = b
		if err := w.applyCommitted(committed); err != nil {
			<-b.done
			b.release()
			return err
		}
	}
}

// follow decides into b, as they come, the commands polled while the rest
// of ending's transaction ends after its flush (its EndTxn), until its
// outcome is known or b is a full poll, and returns b (a new batch if b was
// nil and commands came). Each poll's commands are decided after b's
// earlier ones and on their results, as topUp's are, and on ending's: its
// overlays are not in the state cache yet. At 10k commands/s ≈ 40% of a
// batch's commands come during that rest of the end; until the twelfth
// round they waited for it and were decided by topUp, in the cycle.
func (w *Worker) follow(ctx context.Context, ending, b *batch) *batch {
	for {
		n := 0
		if b != nil {
			n = b.fetches.NumRecords()
		}
		if n >= w.cfg.MaxPollRecords {
			return b
		}
		more := w.sess.Client().PollRecords(ending.endingCtx, w.cfg.MaxPollRecords-n)
		if more.NumRecords() == 0 { // ended, or errors only
			return b
		}
		w.observe(more)
		if b == nil {
			b = w.decide(ctx, more, ending)
			continue
		}
		b.fetches = mergeFetches(b.fetches, more)
		b.chain(ending)
		b.decideFetches(ctx, more)
	}
}

// chain makes b's next commands decided on b's overlays, then on those of
// ending, the batch before it, whose transaction is ending or committed
// and not applied yet: its states are not in the state cache.
func (b *batch) chain(ending *batch) {
	b.prev = sharesOf(ending.parts)
	for a, pbs := range sharesOf(b.parts) {
		b.prev[a] = append(b.prev[a], pbs...)
	}
}

// buffered is the nil context with which PollRecords returns what the
// client has buffered, without waiting.
var buffered context.Context

// topUp adds to b, decided beside the end of the transaction before it
// from the commands polled during that end (gather, follow), the commands
// the client buffered as that end was over, if b is not a full poll
// (franz-go sends a partition's next fetch only once its last one was
// polled, so that holds what came up to the last poll).
// They are decided after b's own commands and on their results, and on
// those of committed, the batch before (not applied yet), so that a
// command waits for one transaction, not two: the end of the transaction
// before (≈ half the cycle, at 10k commands/s), and b's own. (Until the
// tenth round, a batch that was not a full poll waited for that end to be
// decided whole, and took the deciding of all its commands into the
// cycle; a batch decided beside the end without them made what came
// during the end wait for one transaction more: p50 at 10k commands/s 3.1
// → 4.0 ms.) A nil b, or one dropped by settle, is left to the loop's
// next poll.
func (w *Worker) topUp(ctx context.Context, committed, b *batch) {
	if b == nil {
		return
	}
	n := b.fetches.NumRecords()
	if n >= w.cfg.MaxPollRecords {
		return
	}
	more := w.sess.Client().PollRecords(buffered, w.cfg.MaxPollRecords-n)
	if more.NumRecords() == 0 {
		return
	}
	w.observe(more)
	b.fetches = mergeFetches(b.fetches, more)
	b.chain(committed)
	b.decideFetches(ctx, more)
}

// settle waits for the end of ending's transaction. next, the batch
// decided beside it (or nil) from the commands polled meanwhile, is
// returned to go on with if ending committed, and ending with it, to be
// applied (applyCommitted); else next is dropped, since it was decided on
// state that was never committed, and the commands of ending and those
// polled beside it are polled again.
func (w *Worker) settle(ending, next *batch, polled kgo.Fetches) (*batch, *batch, error) {
	<-ending.done
	if ending.endErr != nil {
		ending.release()
		next.release()
		return nil, nil, ending.endErr
	}
	if !ending.committed {
		ending.release()
		w.rewind(ending.fetches, polled)
		next.release()
		return nil, nil, nil
	}
	if next != nil && !next.owned() {
		// A partition of next was revoked while it was decided, during
		// ending's End: the session's flag that would abort next's
		// transaction was cleared by that End (kafkatxn.Session.End resets
		// it once an end is over), so next is dropped here, and its commands of the
		// partitions still owned polled again.
		w.log.Info("dropping a batch decided beside a revoke")
		w.rewind(polled)
		next.release()
		return nil, ending, nil
	}
	return next, ending, nil
}

// applyCommitted applies b, a batch whose transaction committed (nil for
// none), to the state cache and the store, wakes the readers waiting for
// its versions, and gives its arenas back: after the batch decided on its
// overlays has begun its transaction, so that applying it is not in the
// cycle of transactions.
func (w *Worker) applyCommitted(b *batch) error {
	if b == nil {
		return nil
	}
	defer b.release()
	if err := b.apply(); err != nil {
		return fmt.Errorf("state store write after commit (restart restores it from the changelog): %w", err)
	}
	w.wrote()
	return nil
}

// owned reports whether every partition b decided is still the worker's,
// in the assignment b decided it in.
func (b *batch) owned() bool {
	for _, pb := range b.parts {
		if cur, ok := b.w.partition(pb.a.key.topic, pb.a.key.partition); !ok || cur != pb.a {
			return false
		}
	}
	return true
}

// observe logs a poll's fetch errors and records its partitions' lag.
func (w *Worker) observe(fetches kgo.Fetches) {
	fetches.EachError(func(t string, p int32, err error) {
		if !errors.Is(err, context.Canceled) { // a poll beside an ending transaction, cut short
			w.log.Warn("fetch failed", "topic", t, "partition", p, "err", err)
		}
	})
	fetches.EachPartition(func(p kgo.FetchTopicPartition) {
		if n := len(p.Records); n > 0 {
			w.metrics.setLag(p.Topic, p.Partition, p.HighWatermark-p.Records[n-1].Offset-1)
		}
	})
}

// decide decides a poll's commands, its partitions in parallel, into a
// batch whose records wait for its transaction to begin. ending is the
// batch whose transaction is ending meanwhile, if any.
func (w *Worker) decide(ctx context.Context, fetches kgo.Fetches, ending *batch) *batch {
	b := newBatch(w, fetches, ending)
	b.decideFetches(ctx, fetches)
	return b
}

// decideFetches decides fetches into b, each partition's commands after
// those b.prev holds of it.
func (b *batch) decideFetches(ctx context.Context, fetches kgo.Fetches) {
	w := b.w
	w.at(AfterPoll)
	procs, total := runtime.GOMAXPROCS(0), fetches.NumRecords()
	var wg sync.WaitGroup
	fetches.EachPartition(func(ftp kgo.FetchTopicPartition) {
		if len(ftp.Records) == 0 {
			return
		}
		next := new(atomic.Int64)
		for _, share := range shares(ftp.Records, procs, total) {
			sub := ftp
			sub.Records = share
			if total < minHandOff {
				b.run(ctx, sub, next)
				continue
			}
			wg.Add(1)
			w.deciders <- func() {
				defer wg.Done()
				b.run(ctx, sub, next)
			}
		}
	})
	wg.Wait()
	b.prev = nil
}

// minHandOff is the fewest commands of a poll handed to the pool; a
// smaller poll is decided in the loop's goroutine, where handing its
// partitions over cost more than deciding them (at 10k commands/s, ~25
// commands a poll in ~12 partitions: 250 → 190 µs a batch).
const minHandOff = 64

// minShare is the fewest commands a partition's share of a batch is split
// to: a share costs an overlay, an arena and a hand-off to the pool.
const minShare = 256

// shares splits the records of one partition, out of total in the poll,
// into shares decided in parallel: a poll of the commands of one or two
// partitions (as a worker that is behind polls them: a fetch holds up to a
// megabyte of each) would otherwise be decided on one or two of procs
// cores. Each aggregate's commands stay in one share, in offset order, so
// that each aggregate's events keep their order; the events of different
// aggregates of a partition can then be written in another order than
// their commands', which nothing promises.
func shares(records []*kgo.Record, procs, total int) [][]*kgo.Record {
	k := min(len(records)/minShare, (len(records)*procs+total-1)/total)
	if k <= 1 {
		return [][]*kgo.Record{records}
	}
	out := make([][]*kgo.Record, k)
	for i := range out {
		out[i] = make([]*kgo.Record, 0, 2*len(records)/k)
	}
	for _, r := range records {
		// FNV-1a: the partition is the key's murmur2 modulo the
		// partition count, so murmur2 modulo k could be one value for
		// every key of a partition.
		h := uint32(2166136261)
		for _, c := range r.Key {
			h = (h ^ uint32(c)) * 16777619
		}
		out[h%uint32(k)] = append(out[h%uint32(k)], r)
	}
	return out
}

// gather polls the next commands while b's records are flushed, until
// they are all written or max commands came, and returns what came: the
// loop decides them while b's transaction ends.
func (b *batch) gather(cl *kgo.Client, max int) kgo.Fetches {
	var got kgo.Fetches
	for n := 0; n < max; n = got.NumRecords() {
		polled := cl.PollRecords(b.pollCtx, max-n)
		got = mergeFetches(got, polled)
		if polled.NumRecords() == 0 { // cut short, or errors only
			break
		}
	}
	return got
}

// mergeFetches returns the fetches of a and then b with one entry per
// partition, its records in the order polled, so that a partition is
// decided in one piece. The error of a poll cut short by its context is
// left out.
//
// A poll has one entry per partition already: merged into nothing, it is
// returned as it is, and nothing is merged from one that was cut short
// with nothing (as a gather's last poll is), so that the maps below are
// made only for two polls with records. (Made for every poll, they were
// 1.2% of the worker's CPU at 10k commands/s.)
func mergeFetches(a, b kgo.Fetches) kgo.Fetches {
	cut, other := entries(b)
	switch {
	case len(a) == 0 && cut == 0:
		return b
	case other == 0:
		return a
	}
	type key struct {
		topic     string
		partition int32
	}
	var out kgo.Fetch
	topics := map[string]int{}
	parts := map[key]int{}
	for _, fs := range [2]kgo.Fetches{a, b} {
		fs.EachTopic(func(t kgo.FetchTopic) {
			for _, p := range t.Partitions {
				if isCut(p) {
					continue
				}
				ti, ok := topics[t.Topic]
				if !ok {
					ti = len(out.Topics)
					topics[t.Topic] = ti
					out.Topics = append(out.Topics, kgo.FetchTopic{Topic: t.Topic, TopicID: t.TopicID})
				}
				k := key{t.Topic, p.Partition}
				pi, ok := parts[k]
				if !ok {
					parts[k] = len(out.Topics[ti].Partitions)
					out.Topics[ti].Partitions = append(out.Topics[ti].Partitions, p)
					continue
				}
				q := &out.Topics[ti].Partitions[pi]
				if len(p.Records) > 0 { // an entry of errors only carries no watermarks
					q.Records = append(q.Records[:len(q.Records):len(q.Records)], p.Records...)
					q.HighWatermark, q.LastStableOffset, q.LogStartOffset = p.HighWatermark, p.LastStableOffset, p.LogStartOffset
				}
				q.Err = cmp.Or(p.Err, q.Err)
			}
		})
	}
	if len(out.Topics) == 0 {
		return nil
	}
	return kgo.Fetches{out}
}

// entries counts the partition entries of fs that are a poll cut short by
// its context, and the others.
func entries(fs kgo.Fetches) (cut, other int) {
	for _, f := range fs {
		for _, t := range f.Topics {
			for _, p := range t.Partitions {
				if isCut(p) {
					cut++
				} else {
					other++
				}
			}
		}
	}
	return cut, other
}

// isCut reports whether p is the entry of a poll cut short by its context.
func isCut(p kgo.FetchPartition) bool {
	return len(p.Records) == 0 && (errors.Is(p.Err, context.Canceled) || errors.Is(p.Err, context.DeadlineExceeded))
}

// end ends b's transaction: it produces b's records and puts b's offsets in
// the transaction, waits for both, and commits (or aborts) it (the loop
// applies a committed batch once the next has begun: applyCommitted). It
// runs beside the loop, which polls and decides the next batch meanwhile;
// done is closed when it is over.
func (w *Worker) end(ctx context.Context, b *batch) {
	defer close(b.done)
	defer b.stopPoll()
	began := time.Now()
	// The batch is finished even when ctx was cancelled meanwhile (SIGTERM):
	// ending it gets a context of its own.
	endCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	b.produce()
	offsets := make(chan error, 1)
	w.offsets <- func() { offsets <- w.sess.CommitOffsets(endCtx, b.fetches) } // free: the end before it waited for its offsets
	// Every record must be acknowledged before deciding to commit: a record
	// that failed (its promise reports it) must abort the transaction, or
	// the offsets would commit without it.
	try := kgo.TryCommit
	cl := w.sess.Client()
	if err := cl.Flush(endCtx); err != nil {
		b.abort(abortProduceFailed, fmt.Errorf("flush: %w", err))
		// Records that could not be written in time (a partition without
		// a leader) are failed, so that their promises run.
		_ = cl.AbortBufferedRecords(endCtx)
	}
	b.produced.Wait()
	b.stopPoll()
	// The offsets are in the transaction, or failed, before it ends: a
	// request of this transaction must not reach the broker after its
	// EndTxn.
	offsetsErr := <-offsets
	w.at(AfterProduce)
	abortKind, abortErr := b.abortReason()
	switch {
	case abortErr != nil:
		w.log.Warn("aborting transaction", "reason", abortErr)
		try = kgo.TryAbort
	case offsetsErr != nil:
		w.log.Warn("aborting transaction", "reason", offsetsErr)
	}
	committed, revoked, err := w.sess.End(endCtx, try, offsetsErr)
	b.ended() // follow stops: the next batch is to begin
	w.metrics.txnDuration.Observe(time.Since(began).Seconds())
	switch {
	case committed:
		w.metrics.committedTxns.Inc()
	case isFenced(err):
		abortKind = "fenced"
	case try == kgo.TryCommit && revoked:
		abortKind = abortRevoked
	case try == kgo.TryCommit:
		abortKind = "commit_failed"
	}
	if !committed {
		w.metrics.transactions.WithLabelValues("aborted").Inc()
		w.metrics.aborts.WithLabelValues(abortKind).Inc()
	}
	if err != nil {
		if isFenced(err) {
			b.endErr = fmt.Errorf("%w: %w", ErrFenced, err)
			return
		}
		w.log.Warn("transaction failed; redoing from the committed offsets", "err", err)
		// An EndTxn whose outcome is unknown leaves the client in the
		// transaction until it is told to abort; the abort re-initialises the
		// producer id, which fences whatever the broker still holds open.
		if err := cl.EndTransaction(endCtx, kgo.TryAbort); err != nil {
			if isFenced(err) {
				b.endErr = fmt.Errorf("%w: %w", ErrFenced, err)
				return
			}
			w.log.Warn("abort after a failed transaction", "err", err)
		}
	}
	if !committed {
		// The overlays are dropped with b; the loop rewinds to b's first
		// commands. A commit that was tried and did not report success may
		// still have happened (an EndTxn whose answer was lost; franz-go
		// then retries as an abort and reports no error), so the local
		// state of the batch's partitions is caught up from the
		// changelog, which holds the truth either way, before they go on.
		if err != nil || try == kgo.TryCommit {
			b.restoreAgain()
		}
		return
	}
	b.committed = true
	w.at(AfterCommit)
}

// rewind sets the session's position back to the first commands of
// polls that did not commit, the earliest poll first: the batch that did
// not commit, and the commands polled beside it. (The session does not
// move the position at an end; see kafkatxn.Session.)
func (w *Worker) rewind(polls ...kgo.Fetches) {
	to := map[string]map[int32]kgo.EpochOffset{}
	for _, fetches := range polls {
		fetches.EachPartition(func(p kgo.FetchTopicPartition) {
			if len(p.Records) == 0 {
				return
			}
			if to[p.Topic] == nil {
				to[p.Topic] = map[int32]kgo.EpochOffset{}
			}
			if _, ok := to[p.Topic][p.Partition]; !ok {
				first := p.Records[0]
				to[p.Topic][p.Partition] = kgo.EpochOffset{Epoch: first.LeaderEpoch, Offset: first.Offset}
			}
		})
	}
	w.sess.Client().SetOffsets(to)
}

// isFenced reports the errors after which this producer can never commit.
func isFenced(err error) bool {
	return errors.Is(err, kerr.ProducerFenced) || errors.Is(err, kerr.InvalidProducerEpoch) ||
		errors.Is(err, kerr.TransactionalIDAuthorizationFailed)
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
		// The member id and generation tie this process to what a
		// description of the group shows (kadm.DescribeGroups).
		member, generation := cl.GroupMetadata()
		w.log.Info("partitions assigned", "topic", topic, "partitions", ps, "member", member, "generation", generation)
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
// across its assignments; each assignment looks it up once (assigned.lock:
// a lookup in the sync.Map for each partition of each batch's write hashed
// its key as an interface).
func (w *Worker) lock(k partitionKey) *sync.Mutex {
	m, _ := w.locks.LoadOrStore(k, new(sync.Mutex))
	return m.(*sync.Mutex)
}
