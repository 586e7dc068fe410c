package processor

import (
	"iter"
	"strconv"
	"sync"
	"time"

	"github.com/deciderhq/decider/schemas"
	"github.com/deciderhq/decider/statestore"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are a worker's Prometheus metrics (Config.Registerer). Counts of
// what a transaction wrote are added when it commits, so that a batch
// aborted and redone is counted once.
type metrics struct {
	commands        *prometheus.CounterVec
	commandLatency  *prometheus.HistogramVec
	decide          *prometheus.HistogramVec
	dedupeHits      *prometheus.CounterVec
	deadLetters     *prometheus.CounterVec
	records         *prometheus.CounterVec
	batchCommands   prometheus.Histogram
	txnDuration     prometheus.Histogram
	transactions    *prometheus.CounterVec
	committedTxns   prometheus.Counter // transactions{outcome="committed"}: looked up once
	aborts          *prometheus.CounterVec
	owned           *prometheus.GaugeVec
	restoreRecords  *prometheus.CounterVec
	restoreDuration *prometheus.HistogramVec
	lag             *prometheus.GaugeVec
	lagGauges       sync.Map // partitionKey → prometheus.Gauge of lag, see setLag
	cacheHits       prometheus.Counter
	cacheMisses     prometheus.Counter
	storeWrites     *prometheus.CounterVec
}

// Kinds of records produced (label "kind" of decider_records_produced_total).
const (
	kindEvent      = "event"
	kindSnapshot   = "snapshot"
	kindReply      = "reply"
	kindForward    = "forward"
	kindDeadLetter = "dead_letter"
)

// Why a snapshot was written to the state store (label "reason" of
// decider_state_store_writes_total); see checkpoints.go.
const (
	writeEvicted  = "evicted"  // the state cache evicted it
	writeSwept    = "swept"    // the sweep after a committed batch passed it
	writeUncached = "uncached" // too big for the cache (or no cache): written at its commit
	writeStopped  = "stopped"  // the worker stopped and wrote its cache back
)

// latencyBuckets span 100µs to ~30s.
var latencyBuckets = prometheus.ExponentialBuckets(0.0001, 2.5, 16)

// newMetrics makes the metrics and registers them with reg, if not nil;
// ready is the worker's readiness.
func newMetrics(reg prometheus.Registerer, store *statestore.Store, cache *stateCache, ready func() (bool, string)) *metrics {
	const ns = "decider"
	m := &metrics{
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "commands_total",
			Help: "Commands answered, by aggregate type and reply status (a duplicate counts with its first reply's status)."},
			[]string{"aggregate_type", "status"}),
		commandLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "command_latency_seconds",
			Help: "From a command's record timestamp (its producer's clock) to the commit of its reply: send→reply as the worker sees it.", Buckets: latencyBuckets},
			[]string{"aggregate_type"}),
		decide: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "decide_duration_seconds",
			Help: "Time in the domain's Decide and Evolve and the encoding of their output, per command, sampled: the first command of each batch's share of a partition and every eighth after it (count it with decider_commands_total).", Buckets: latencyBuckets},
			[]string{"aggregate_type"}),
		dedupeHits: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "dedupe_hits_total",
			Help: "Commands whose id was in the aggregate's dedupe window: answered with the first reply, nothing written."},
			[]string{"aggregate_type"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "dead_letters_total",
			Help: "Commands copied to the dead-letter topic, by reason."},
			[]string{"aggregate_type", "reason"}),
		records: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "records_produced_total",
			Help: "Records written in committed transactions, by kind (event, snapshot, reply, forward, dead_letter)."},
			[]string{"kind"}),
		batchCommands: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "batch_commands",
			Help: "Commands per transaction.", Buckets: prometheus.ExponentialBuckets(1, 4, 8)}),
		txnDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "transaction_duration_seconds",
			Help: "From the start of a transaction to its commit or abort.", Buckets: latencyBuckets}),
		transactions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "transactions_total",
			Help: "Transactions ended, by outcome (committed, aborted)."},
			[]string{"outcome"}),
		aborts: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "transaction_aborts_total",
			Help: "Transactions aborted, by reason (produce_failed, commit_failed, fenced, revoked, batch_failed)."},
			[]string{"reason"}),
		owned: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "partitions_owned",
			Help: "Commands partitions assigned to this worker."},
			[]string{"aggregate_type"}),
		restoreRecords: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "restore_records_total",
			Help: "Snapshot records restored from the changelog."},
			[]string{"aggregate_type"}),
		restoreDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "restore_duration_seconds",
			Help: "Time to restore one partition from the changelog.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 10)},
			[]string{"aggregate_type"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "consumer_lag_records",
			Help: "Commands behind the high watermark of each owned partition, as of the last poll."},
			[]string{"topic", "partition"}),
	}
	m.storeWrites = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "state_store_writes_total",
		Help: "Snapshots written to the state store, by reason (evicted, swept, uncached, stopped); against decider_records_produced_total{kind=\"snapshot\"}, how many writes the write-back cache saves."},
		[]string{"reason"})
	lookups := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "state_cache_lookups_total",
		Help: "Lookups of aggregates in the snapshot cache in front of the state store, by result (hit, miss); hit ÷ all is the hit ratio."},
		[]string{"result"})
	m.cacheHits, m.cacheMisses = lookups.WithLabelValues("hit"), lookups.WithLabelValues("miss")
	m.committedTxns = m.transactions.WithLabelValues("committed")
	if reg != nil {
		cacheSize := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Name: "state_cache_size_bytes",
			Help: "Bytes of the snapshots held by the state cache (bounded by its configured size)."},
			func() float64 { return float64(cache.len()) })
		readyGauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Name: "ready",
			Help: "1 when the worker is a member of its group with every assigned partition restored (/readyz)."},
			func() float64 {
				if ok, _ := ready(); ok {
					return 1
				}
				return 0
			})
		reg.MustRegister(m.commands, m.commandLatency, m.decide, m.dedupeHits, m.deadLetters, m.records,
			m.batchCommands, m.txnDuration, m.transactions, m.aborts, m.owned, m.restoreRecords,
			m.restoreDuration, m.lag, lookups, cacheSize, readyGauge, storeCollector{store}, m.storeWrites)
	}
	return m
}

// tally counts what one partition's share of a batch did, added to the
// metrics if the transaction commits.
type tally struct {
	statuses    counts[schemas.Status]
	dedupeHits  int
	deadLetters counts[string] // by reason
	records     counts[string] // by kind
	timestamps  []time.Time    // of the commands answered

	// Room for the first counts of a share, in the tally itself (see
	// init).
	room struct {
		statuses [2]count[schemas.Status]
		records  [3]count[string]
	}
}

// init readies the tally of a share of n commands: the counts of its first
// statuses and kinds of record are kept in the tally itself, and its
// timestamps get room for n, so that tallying a share allocates once.
// (Grown from empty, they took five allocations a share, 1% of the
// worker's CPU at 10k commands/s, where a share is a few commands.)
func (t *tally) init(n int) {
	t.statuses = t.room.statuses[:0]
	t.records = t.room.records[:0]
	t.timestamps = make([]time.Time, 0, n)
}

// counts counts by key, for the few keys a batch has (a status, a kind of
// record): a map made and hashed for each batch was 3% of the worker's
// allocations.
type counts[K comparable] []count[K]

// count is the count of one key.
type count[K comparable] struct {
	key K
	n   int
}

func (c *counts[K]) add(k K) { c.addN(k, 1) }

func (c *counts[K]) addN(k K, n int) {
	for i := range *c {
		if (*c)[i].key == k {
			(*c)[i].n += n
			return
		}
	}
	*c = append(*c, count[K]{k, n})
}

// addAll adds the counts of o.
func (c *counts[K]) addAll(o counts[K]) {
	for _, e := range o {
		c.addN(e.key, e.n)
	}
}

func (t *tally) command(s schemas.Status, ts time.Time) {
	t.statuses.add(s)
	t.timestamps = append(t.timestamps, ts)
}

func (t *tally) record(kind string) { t.records.add(kind) }

func (t *tally) deadLetter(reason string) {
	t.deadLetters.add(reason)
	t.record(kindDeadLetter)
}

// committed adds the tallies of a committed batch's shares of aggregate
// type typ.
func (m *metrics) committed(typ string, tallies iter.Seq[*tally], at time.Time) {
	// The counts of the shares are summed first: a batch at 10k commands/s
	// has ~18 shares, and a labelled child looked up for each count of
	// each share was 0.7 µs of CPU a command.
	var sum tally
	lat := m.commandLatency.WithLabelValues(typ)
	for t := range tallies {
		for _, ts := range t.timestamps {
			lat.Observe(max(at.Sub(ts), 0).Seconds())
		}
		sum.statuses.addAll(t.statuses)
		sum.deadLetters.addAll(t.deadLetters)
		sum.records.addAll(t.records)
		sum.dedupeHits += t.dedupeHits
	}
	for _, c := range sum.statuses {
		m.commands.WithLabelValues(typ, string(c.key)).Add(float64(c.n))
	}
	if sum.dedupeHits > 0 {
		m.dedupeHits.WithLabelValues(typ).Add(float64(sum.dedupeHits))
	}
	for _, c := range sum.deadLetters {
		m.deadLetters.WithLabelValues(typ, c.key).Add(float64(c.n))
	}
	for _, c := range sum.records {
		m.records.WithLabelValues(c.key).Add(float64(c.n))
	}
}

// setLag records a partition's lag. Its gauge is kept from the first
// poll of the partition until forget: looked up by its labels at every
// poll, it cost more than the rest of observing the poll.
func (m *metrics) setLag(topic string, p int32, lag int64) {
	k := partitionKey{topic, p}
	g, ok := m.lagGauges.Load(k)
	if !ok {
		g, _ = m.lagGauges.LoadOrStore(k, m.lag.WithLabelValues(topic, strconv.Itoa(int(p))))
	}
	g.(prometheus.Gauge).Set(float64(max(lag, 0)))
}

// forget drops the per-partition series of a partition no longer owned.
func (m *metrics) forget(topic string, p int32) {
	m.lagGauges.Delete(partitionKey{topic, p})
	m.lag.DeleteLabelValues(topic, strconv.Itoa(int(p)))
}

// storeCollector reports the state store's figures at each scrape.
type storeCollector struct{ s *statestore.Store }

var (
	storeSizeDesc = prometheus.NewDesc("decider_state_store_size_bytes",
		"Disk space the state store takes.", nil, nil)
	storeCacheBytesDesc = prometheus.NewDesc("decider_state_store_cache_size_bytes",
		"Bytes in the state store's block cache.", nil, nil)
	storeCacheDesc = prometheus.NewDesc("decider_state_store_cache_lookups_total",
		"State store block cache lookups, by result (hit, miss); hit ÷ all is the hit ratio.", []string{"result"}, nil)
)

// Describe sends the descriptors of the store's metrics.
func (c storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- storeSizeDesc
	ch <- storeCacheBytesDesc
	ch <- storeCacheDesc
}

// Collect reads the store's figures.
func (c storeCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.Stats()
	ch <- prometheus.MustNewConstMetric(storeSizeDesc, prometheus.GaugeValue, float64(st.DiskBytes))
	ch <- prometheus.MustNewConstMetric(storeCacheBytesDesc, prometheus.GaugeValue, float64(st.CacheBytes))
	ch <- prometheus.MustNewConstMetric(storeCacheDesc, prometheus.CounterValue, float64(st.CacheHits), "hit")
	ch <- prometheus.MustNewConstMetric(storeCacheDesc, prometheus.CounterValue, float64(st.CacheMisses), "miss")
}
