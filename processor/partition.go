package processor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/deciderhq/decider/statestore"
	"github.com/deciderhq/decider/topology"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// assigned is one assignment of a commands partition to this worker, from
// onAssigned to onRevoked. A partition assigned again gets a new one.
type assigned struct {
	w           *Worker
	cl          *kgo.Client // the session's client, whose fetching of the partition waits for the restore
	agg         *topology.Aggregate
	key         partitionKey
	topics      topology.Topics
	sourceValue []byte // ce_source of what the worker emits: "A/T"
	gen         uint64 // tells this assignment from every other one of the process

	ctx    context.Context // cancelled on revoke
	cancel context.CancelFunc
	ready  chan struct{} // closed when the restore is done
	ids    *idFilter     // of the ids the store holds for the partition; nil for none
	lock   *sync.Mutex   // the partition's (Worker.lock), the same for each of its assignments

	// committed is the changelog offset after the last snapshot that a
	// batch of this assignment committed and applied; 0 before the
	// first. Only the loop's apply and flush use it, one at a time.
	committed int64

	decideTime prometheus.Observer // decider_decide_duration_seconds of the type
}

func newAssigned(w *Worker, cl *kgo.Client, agg *topology.Aggregate, p int32) *assigned {
	ctx, cancel := context.WithCancel(context.Background())
	topics := w.cfg.App.Topics(agg)
	key := partitionKey{topics.Commands, p}
	return &assigned{
		w: w, cl: cl, agg: agg, key: key, topics: topics,
		sourceValue: []byte(w.cfg.App.Source(agg)), ctx: ctx, cancel: cancel, ready: make(chan struct{}),
		decideTime: w.metrics.decide.WithLabelValues(agg.Name()), gen: assignments.Add(1),
		ids: newIDFilter(w.cfg.IDFilterBytes), lock: w.lock(key),
	}
}

// assignments counts the assignments made by the process.
var assignments atomic.Uint64

// fillIDs adds the id of every snapshot the store holds for the partition
// to its filter, which then answers: the ids written meanwhile were added
// before their write. Until then, and if the scan fails, every lookup that
// misses the cache reads the store.
func (a *assigned) fillIDs(log *slog.Logger) {
	if a.ids == nil {
		return
	}
	began := time.Now()
	if err := a.w.cfg.Store.EachID(a.ctx, a.agg.Name(), a.key.partition, a.ids.addBytes); err != nil {
		if a.ctx.Err() == nil {
			log.Warn("id filter not filled: lookups read the store", "err", err)
		}
		return
	}
	a.ids.complete.Store(true)
	log.Debug("id filter filled", "took", time.Since(began))
}

// restore catches the partition's local state up with its changelog,
// retrying with backoff until it succeeds or the partition is revoked.
func (a *assigned) restore() {
	lock := a.lock
	src := statestore.Changelog{Topic: a.topics.Snapshots, Kafka: a.w.cfg.Kafka, Progress: func(int) { a.w.at(MidRestore) }}
	log := a.w.log.With("topic", a.topics.Snapshots, "partition", a.key.partition)
	for backoff := 100 * time.Millisecond; ; backoff = min(2*backoff, 5*time.Second) {
		lock.Lock()
		st, err := a.w.cfg.Store.Restore(a.ctx, src, a.agg.Name(), a.key.partition)
		lock.Unlock()
		if err == nil {
			log.Info("partition restored", "records", st.Records, "from", st.From, "to", st.To, "full", st.Full, "took", st.Took)
			a.w.metrics.restoreRecords.WithLabelValues(a.agg.Name()).Add(float64(st.Records))
			a.w.metrics.restoreDuration.WithLabelValues(a.agg.Name()).Observe(st.Took.Seconds())
			close(a.ready)
			a.w.wrote()
			a.resume()
			a.fillIDs(log)
			return
		}
		if a.ctx.Err() != nil {
			return
		}
		log.Warn("restore failed; retrying", "err", err, "in", backoff)
		select {
		case <-a.ctx.Done():
			return
		case <-time.After(backoff):
		}
	}
}

// resume lets the partition's commands be fetched again, unless the
// assignment was replaced meanwhile (the new one paused it for its own
// restore).
func (a *assigned) resume() {
	a.w.mu.Lock()
	defer a.w.mu.Unlock()
	if a.ctx.Err() == nil && a.w.parts[a.key] == a {
		a.cl.ResumeFetchPartitions(map[string][]int32{a.key.topic: {a.key.partition}})
	}
}

// topicCache knows the partition counts of reply topics, so that a reply is
// addressed without a metadata request per command, and a reply topic that
// does not exist is noticed before producing to it (which would fail the
// transaction, again and again).
type topicCache struct {
	adm *kadm.Client
	log *slog.Logger
	mu  sync.Mutex
	m   map[string]topicInfo
}

type topicInfo struct {
	partitions int32
	err        error
	at         time.Time
}

// Cached counts are refreshed after topicTTL; a missing topic is asked
// about again after missingTTL.
const (
	topicTTL   = 5 * time.Minute
	missingTTL = 10 * time.Second
)

var errNoTopic = errors.New("topic does not exist")

func newTopicCache(adm *kadm.Client, log *slog.Logger) *topicCache {
	return &topicCache{adm: adm, log: log, m: map[string]topicInfo{}}
}

// forget drops what is known of topic, so that the next reply to it looks
// it up again.
func (c *topicCache) forget(topic string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, topic)
}

func (c *topicCache) partitions(ctx context.Context, topic string) (int32, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ti, ok := c.m[topic]; ok {
		ttl := topicTTL
		if ti.err != nil {
			ttl = missingTTL
		}
		if time.Since(ti.at) < ttl {
			return ti.partitions, ti.err
		}
	}
	ti := topicInfo{at: time.Now()}
	// A batch being finished after a SIGTERM still needs its replies.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	details, err := c.adm.ListTopics(ctx, topic)
	d, ok := details[topic]
	switch {
	case err == nil && ok && errors.Is(d.Err, kerr.UnknownTopicOrPartition):
		ti.err = fmt.Errorf("%w: %s", errNoTopic, topic)
		// Once per missingTTL, not per command.
		c.log.Warn("a reply topic does not exist; replies to it are dropped", "topic", topic)
	case err == nil && ok && d.Err == nil && len(d.Partitions) > 0:
		ti.partitions = int32(len(d.Partitions))
	default: // not cached: the broker may answer soon
		if err == nil {
			err = d.Err
		}
		return 0, fmt.Errorf("metadata of %s: %w", topic, err)
	}
	c.m[topic] = ti
	return ti.partitions, ti.err
}
