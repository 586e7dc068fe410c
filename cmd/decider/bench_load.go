package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/deciderhq/decider/examples/accounts"
	"github.com/deciderhq/decider/schemas"
	"github.com/deciderhq/decider/topology"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// workload makes the commands of the benchmark: command i < accounts opens
// account i; every later one is a deposit (60%) or a withdrawal (40%, some
// refused for insufficient funds) of a random opened account. The same seed
// makes the same commands, so decider and the reference get the same inputs.
// A workload is used by one goroutine at a time.
type workload struct {
	agg      *topology.Aggregate
	topics   topology.Topics
	accounts int
	rng      *rand.Rand
	sentAt   string // ce_time of the commands made: set once per workload, as a caller sets it
}

func newWorkload(agg *topology.Aggregate, topics topology.Topics, accounts int, seed uint64) *workload {
	return &workload{
		agg: agg, topics: topics, accounts: accounts, rng: rand.New(rand.NewPCG(seed, seed)),
		sentAt: time.Now().UTC().Format(time.RFC3339Nano),
	}
}

// command returns the i-th command of the workload, with command id cmdID.
func (w *workload) command(i int, cmdID string) (*kgo.Record, error) {
	var (
		id  string
		cmd accounts.Command
	)
	switch {
	case i < w.accounts:
		id, cmd = accountID(i), accounts.OpenAccount{Owner: "owner-" + strconv.Itoa(i)}
	case w.rng.IntN(10) < 6:
		id, cmd = accountID(w.rng.IntN(w.accounts)), accounts.Deposit{Amount: 1 + w.rng.Int64N(1000)}
	default:
		id, cmd = accountID(w.rng.IntN(w.accounts)), accounts.Withdraw{Amount: 1 + w.rng.Int64N(1000)}
	}
	typ, payload, err := w.agg.Schemas().Encode(cmd)
	if err != nil {
		return nil, fmt.Errorf("encode command %d: %w", i, err)
	}
	h := func(k, v string) kgo.RecordHeader { return kgo.RecordHeader{Key: k, Value: []byte(v)} }
	return &kgo.Record{
		Topic: w.topics.Commands, Partition: topology.Partition([]byte(id), w.agg.Partitions()),
		Key: []byte(id), Value: payload,
		Headers: []kgo.RecordHeader{
			h(schemas.HeaderSpecVersion, schemas.SpecVersion), h(schemas.HeaderID, cmdID), h(schemas.HeaderType, typ),
			h(schemas.HeaderSource, "decider-bench"), h(schemas.HeaderSubject, id), h(schemas.HeaderTime, w.sentAt),
			h(schemas.HeaderContentType, schemas.ContentType), h(schemas.HeaderReplyTo, w.topics.Replies),
		},
	}, nil
}

func accountID(i int) string { return "acc-" + strconv.Itoa(i) }

// producer returns a client that produces to explicit partitions, sending
// each record at once.
func producer(kafka []kgo.Opt) (*kgo.Client, error) {
	cl, err := kgo.NewClient(append(kafka[:len(kafka):len(kafka)],
		kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.ProducerLinger(0))...)
	if err != nil {
		return nil, fmt.Errorf("producer: %w", err)
	}
	return cl, nil
}

// preload produces the first n commands of w, non-transactionally, and
// waits until all are written.
func preload(ctx context.Context, kafka []kgo.Opt, w *workload, n int) error {
	return produceAll(ctx, kafka, n, func(i int) (*kgo.Record, error) { return w.command(i, "pre-"+strconv.Itoa(i)) })
}

// produceAll produces the records made by next(0) … next(n-1) and waits
// until all are written.
func produceAll(ctx context.Context, kafka []kgo.Opt, n int, next func(i int) (*kgo.Record, error)) error {
	cl, err := producer(kafka)
	if err != nil {
		return err
	}
	defer cl.Close()
	var failed produceErrors
	for i := range n {
		r, err := next(i)
		if err != nil {
			return err
		}
		cl.Produce(ctx, r, failed.promise)
	}
	if err := cl.Flush(ctx); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	return failed.get()
}

// waitConsumed waits until the committed offsets of group on topic add up
// to n (the topic's records, all from offset 0), and returns when it saw
// that. A system commits its offsets in the transaction that holds the
// replies, so this is when the last reply is committed, give or take the
// polling interval. It fails when the offsets stop moving for a minute.
func waitConsumed(ctx context.Context, adm *kadm.Client, group, topic string, n int64) (time.Time, error) {
	const interval, stall = 5 * time.Millisecond, time.Minute
	last, moved := int64(-1), time.Now()
	for {
		offs, err := adm.FetchOffsets(ctx, group)
		if err == nil {
			err = offs.Error()
		}
		var sum int64
		if err == nil {
			offs.Each(func(o kadm.OffsetResponse) {
				if o.Topic == topic {
					sum += o.At
				}
			})
		}
		now := time.Now()
		switch {
		case sum >= n:
			return now, nil
		case sum != last:
			last, moved = sum, now
		case now.Sub(moved) > stall:
			return now, fmt.Errorf("group %s stuck at %d of %d commands of %s for %s (last error: %v)", group, sum, n, topic, stall, err)
		}
		select {
		case <-ctx.Done():
			return now, ctx.Err()
		case <-time.After(interval):
		}
	}
}

// waitAssigned waits until group is stable with all n partitions of topic
// assigned, and returns when it saw that.
func waitAssigned(ctx context.Context, adm *kadm.Client, group, topic string, n int32) (time.Time, error) {
	const interval = 5 * time.Millisecond
	for {
		described, err := adm.DescribeGroups(ctx, group)
		if err == nil {
			err = described.Error()
		}
		if g, ok := described[group]; ok && err == nil && g.State == "Stable" && len(g.AssignedPartitions()[topic]) == int(n) {
			return time.Now(), nil
		}
		select {
		case <-ctx.Done():
			return time.Now(), fmt.Errorf("group %s: waiting for its assignment: %w (last error: %v)", group, ctx.Err(), err)
		case <-time.After(interval):
		}
	}
}

// latency is send→reply latency at one offered load.
type latency struct {
	Offered  int     `json:"offered_per_s"`
	Achieved float64 `json:"sent_per_s"` // what the sender managed: less than offered when it could not keep up
	Sent     int     `json:"sent"`
	Replies  int     `json:"replies"` // answered before the drain timeout
	P50ms    float64 `json:"p50_ms"`
	P99ms    float64 `json:"p99_ms"`
	P999ms   float64 `json:"p999_ms"`
	// CPU time per command sent of the system's process, of the callers
	// (this process: the sender and the reader of the replies; with
	// --systems embedded, in CPUus and 0 here) and of a broker child
	// process (0 for others). On a machine shared with the broker, what
	// a system's cycle competes with the broker and the callers for.
	CPUus       float64 `json:"cpu_us_per_command"`
	CallerCPUus float64 `json:"caller_cpu_us_per_command"`
	BrokerCPUus float64 `json:"broker_cpu_us_per_command"`
	// The p99 of each round's run alone: the pooled P99ms is often one
	// round's slow moment of the shared machine, which this shows.
	RoundP99ms []float64 `json:"round_p99_ms"`
}

// drainTimeout is how long measureLatency waits for the last replies after
// sending stops; a system that falls behind the offered load shows it in
// its percentiles, one that stops answering in Replies < Sent.
const drainTimeout = 2 * time.Minute

// measureLatency offers commands of w (numbered from first) at rate per
// second for d, open loop: a paced sender produces without waiting for
// replies, and a reader of every partition of the replies topic measures
// from handing each command to the producer to reading its reply. The
// command ids are "L<tag>-<n>": tag tells this run's replies from late ones
// of another.
func measureLatency(ctx context.Context, kafka []kgo.Opt, w *workload, first, rate int, d time.Duration, tag string) (latencyRun, error) {
	var res latencyRun
	total := max(int(float64(rate)*d.Seconds()), 1)
	sentAt := make([]atomic.Int64, total) // unix nanos, by sequence number
	prefix := "L" + tag + "-"

	reader, err := replyReader(ctx, kafka, w.topics.Replies)
	if err != nil {
		return res, err
	}
	var replies atomic.Int64
	var began atomic.Int64 // unix nanos: the sending's start, set before any command is sent
	lats, sent := make([]time.Duration, 0, total), make([]time.Duration, 0, total)
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		for {
			fetches := reader.PollFetches(context.Background())
			if fetches.IsClientClosed() {
				return
			}
			now := time.Now().UnixNano()
			fetches.EachRecord(func(r *kgo.Record) {
				key := string(r.Key)
				if !strings.HasPrefix(key, prefix) {
					return // a late reply of another load
				}
				seq, err := strconv.Atoi(key[len(prefix):])
				if err != nil || seq >= total {
					return
				}
				if at := sentAt[seq].Swap(0); at > 0 { // a second reply of one command counts once
					lats = append(lats, time.Duration(now-at))
					sent = append(sent, time.Duration(at-began.Load()))
					replies.Add(1)
				}
			})
		}
	}()
	stopReader := sync.OnceFunc(func() {
		reader.Close()
		<-readDone
	})
	defer stopReader()

	pr, err := producer(kafka)
	if err != nil {
		return res, err
	}
	defer pr.Close()
	var failed produceErrors
	start := time.Now()
	began.Store(start.UnixNano())
	for res.sent < total && ctx.Err() == nil {
		due := min(total, int(float64(rate)*time.Since(start).Seconds())+1)
		for ; res.sent < due; res.sent++ {
			r, err := w.command(first+res.sent, prefix+strconv.Itoa(res.sent))
			if err != nil {
				return res, err
			}
			sentAt[res.sent].Store(time.Now().UnixNano())
			pr.Produce(ctx, r, failed.promise)
		}
		time.Sleep(time.Millisecond)
	}
	res.sentFor = time.Since(start)
	if err := pr.Flush(ctx); err != nil {
		return res, fmt.Errorf("flush: %w", err)
	}
	if err := failed.get(); err != nil {
		return res, err
	}
	deadline := time.Now().Add(drainTimeout)
	for replies.Load() < int64(res.sent) && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond) // the reader counts; nothing to wait on but the count
	}
	stopReader()
	res.lats, res.blocks = lats, blocksOf(lats, sent)
	if len(lats) == 0 {
		return res, fmt.Errorf("no reply to any of %d commands at %d/s within %s", res.sent, rate, drainTimeout)
	}
	return res, ctx.Err()
}

// latencyRun is what measureLatency saw of one run.
type latencyRun struct {
	sent    int
	sentFor time.Duration // from the first command handed to the producer to the last
	// CPU time the system's process, this one (when apart) and the broker
	// process used over the run (set by its caller, which knows them),
	// replies drained included.
	cpu, callerCPU, brokerCPU time.Duration
	lats                      []time.Duration // of the commands answered, in the order read
	blocks                    []*histogram    // of lats, by the second of its run each command was sent in
	roundP99                  []time.Duration // of each run added, in order
}

// add adds the commands of r to l.
func (l *latencyRun) add(r latencyRun) {
	l.sent += r.sent
	l.sentFor += r.sentFor
	l.cpu += r.cpu
	l.callerCPU += r.callerCPU
	l.brokerCPU += r.brokerCPU
	l.roundP99 = append(l.roundP99, quantile(slices.Sorted(slices.Values(r.lats)), 0.99))
	l.lats = append(l.lats, r.lats...)
	l.blocks = append(l.blocks, r.blocks...)
}

// summarize returns the percentiles of the runs in l, at load per second.
func summarize(load int, l latencyRun) latency {
	res := latency{Offered: load, Sent: l.sent, Replies: len(l.lats)}
	if l.sentFor > 0 {
		res.Achieved = float64(l.sent) / l.sentFor.Seconds()
	}
	if l.sent > 0 {
		res.CPUus = float64(l.cpu.Microseconds()) / float64(l.sent)
		res.CallerCPUus = float64(l.callerCPU.Microseconds()) / float64(l.sent)
		res.BrokerCPUus = float64(l.brokerCPU.Microseconds()) / float64(l.sent)
	}
	if len(l.lats) == 0 {
		return res
	}
	slices.Sort(l.lats)
	ms := func(q float64) float64 { return toMs(quantile(l.lats, q)) }
	res.P50ms, res.P99ms, res.P999ms = ms(0.50), ms(0.99), ms(0.999)
	for _, p := range l.roundP99 {
		res.RoundP99ms = append(res.RoundP99ms, toMs(p))
	}
	return res
}

// quantile returns the q-quantile of sorted (0 for none).
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(q*float64(len(sorted)-1))]
}

func toMs(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// replyReader returns a client reading every partition of topic
// (read_committed) from its current end.
func replyReader(ctx context.Context, kafka []kgo.Opt, topic string) (*kgo.Client, error) {
	adm, err := kgo.NewClient(kafka...)
	if err != nil {
		return nil, fmt.Errorf("reply reader: %w", err)
	}
	defer adm.Close()
	ends, err := kadm.NewClient(adm).ListEndOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("end offsets of %s: %w", topic, err)
	}
	at := map[int32]kgo.Offset{}
	ends.Each(func(o kadm.ListedOffset) { at[o.Partition] = kgo.NewOffset().At(o.Offset) })
	cl, err := kgo.NewClient(append(kafka[:len(kafka):len(kafka)],
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: at}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
	)...)
	if err != nil {
		return nil, fmt.Errorf("reply reader: %w", err)
	}
	return cl, nil
}

// produceErrors collects what the promises of produced records report.
type produceErrors struct {
	mu  sync.Mutex
	err error
}

// promise is a kgo produce promise that keeps the record's error.
func (p *produceErrors) promise(r *kgo.Record, err error) {
	if err != nil {
		p.mu.Lock()
		p.err = errors.Join(p.err, fmt.Errorf("produce to %s/%d: %w", r.Topic, r.Partition, err))
		p.mu.Unlock()
	}
}

func (p *produceErrors) get() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}
