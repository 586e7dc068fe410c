package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/deciderhq/decider/internal/kafkatxn"
	"github.com/deciderhq/decider/schemas"
	"github.com/deciderhq/decider/topology"
	"github.com/twmb/franz-go/pkg/kgo"
)

// runReference runs the reference of `decider bench` over the topics of
// app's one aggregate type until ctx ends: decider's transaction loop with
// no domain and no store, the limit a worker on the same broker can reach.
//
// It ends its transactions as the worker does (kafkatxn: the offsets sent
// into the transaction beside the flush, then EndTxn alone), with the
// worker's group, isolation, fetch and partitioning options, one
// transaction per poll of at most maxPoll inputs. For each input it
// produces the input's key and value as an event and as a snapshot to the
// input's partition, and the value as a reply keyed by the input's ce_id
// to the partition of the replies topic the id hashes to (as a worker does
// for a command without ce_replypartition); the consumer offsets go in the
// transaction. It reads no other header, decodes nothing and looks nothing
// up.
func runReference(ctx context.Context, kafka []kgo.Opt, app *topology.App, instance string, maxPoll int) error {
	agg := app.Aggregates()[0]
	t := app.Topics(agg)
	txnID := app.Name() + "-" + instance
	sess, err := kafkatxn.New(append(kafka[:len(kafka):len(kafka)],
		kgo.ConsumeTopics(t.Commands),
		kgo.TransactionTimeout(10*time.Second),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.FetchMaxWait(500*time.Millisecond),
		kgo.FetchMaxBytes(8<<20), // as the worker fetches
	), app.Group(), txnID, slog.New(slog.DiscardHandler), func(context.Context, *kgo.Client, map[string][]int32) {})
	if err != nil {
		return fmt.Errorf("reference %s: %w", txnID, err)
	}
	defer sess.Close()
	cl := sess.Client()
	replies := agg.Partitions() // EnsureTopics creates the replies topic with the aggregate's count
	for {
		fetches := cl.PollRecords(ctx, maxPoll)
		if ctx.Err() != nil || fetches.IsClientClosed() {
			return nil
		}
		if fetches.NumRecords() == 0 {
			continue
		}
		if err := cl.BeginTransaction(); err != nil {
			return fmt.Errorf("reference %s: begin transaction: %w", txnID, err)
		}
		var (
			mu     sync.Mutex
			failed error
		)
		done := func(_ *kgo.Record, err error) {
			if err != nil {
				mu.Lock()
				failed = errors.Join(failed, err)
				mu.Unlock()
			}
		}
		fetches.EachRecord(func(r *kgo.Record) {
			id := referenceID(r)
			cl.Produce(ctx, &kgo.Record{Topic: t.Events, Partition: r.Partition, Key: r.Key, Value: r.Value}, done)
			cl.Produce(ctx, &kgo.Record{Topic: t.Snapshots, Partition: r.Partition, Key: r.Key, Value: r.Value}, done)
			cl.Produce(ctx, &kgo.Record{Topic: t.Replies, Partition: topology.Partition(id, replies), Key: id, Value: r.Value}, done)
		})
		endCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		offsets := make(chan error, 1)
		go func() { offsets <- sess.CommitOffsets(endCtx, fetches) }()
		if err := cl.Flush(endCtx); err != nil {
			done(nil, err)
		}
		offsetsErr := <-offsets
		mu.Lock()
		produceErr := failed
		mu.Unlock()
		try := kgo.TryCommit
		if produceErr != nil {
			try = kgo.TryAbort
		}
		committed, _, err := sess.End(endCtx, try, offsetsErr)
		cancel()
		switch { // the reference does not redo a batch: a failure ends the run
		case err != nil:
			return fmt.Errorf("reference %s: end transaction: %w", txnID, err)
		case produceErr != nil:
			return fmt.Errorf("reference %s: produce: %w", txnID, produceErr)
		case offsetsErr != nil:
			return fmt.Errorf("reference %s: offsets: %w", txnID, offsetsErr)
		case !committed:
			return fmt.Errorf("reference %s: transaction aborted (partitions revoked)", txnID)
		}
	}
}

// referenceID returns an input's ce_id.
func referenceID(r *kgo.Record) []byte {
	for _, h := range r.Headers {
		if h.Key == schemas.HeaderID {
			return h.Value
		}
	}
	return nil
}
