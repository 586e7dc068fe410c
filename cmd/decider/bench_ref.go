package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/deciderhq/decider/schemas"
	"github.com/deciderhq/decider/topology"
	"github.com/twmb/franz-go/pkg/kgo"
)

// runReference runs the reference of `decider bench` over the topics of
// app's one aggregate type until ctx ends: decider's transaction loop with
// no domain and no store, the limit a worker on the same broker can reach.
//
// It is a GroupTransactSession like the worker's (same group, isolation,
// fetch and partitioning options), one transaction per poll of at most
// maxPoll inputs. For each input it produces the input's key and value as
// an event and as a snapshot to the input's partition, and the value as a
// reply keyed by the input's ce_id to the partition of the replies topic
// the id hashes to (as a worker does for a command without
// ce_replypartition); the consumer offsets go in the transaction. It reads
// no other header, decodes nothing and looks nothing up.
func runReference(ctx context.Context, kafka []kgo.Opt, app *topology.App, instance string, maxPoll int) error {
	agg := app.Aggregates()[0]
	t := app.Topics(agg)
	txnID := app.Name() + "-" + instance
	sess, err := kgo.NewGroupTransactSession(append(kafka[:len(kafka):len(kafka)],
		kgo.ConsumerGroup(app.Group()),
		kgo.ConsumeTopics(t.Commands),
		kgo.TransactionalID(txnID),
		kgo.TransactionTimeout(10*time.Second),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.FetchMaxWait(500*time.Millisecond),
		kgo.FetchMaxBytes(8<<20), // as the worker fetches
	)...)
	if err != nil {
		return fmt.Errorf("reference %s: %w", txnID, err)
	}
	defer sess.Close()
	replies := agg.Partitions() // EnsureTopics creates the replies topic with the aggregate's count
	for {
		fetches := sess.PollRecords(ctx, maxPoll)
		if ctx.Err() != nil || fetches.IsClientClosed() {
			return nil
		}
		if fetches.NumRecords() == 0 {
			continue
		}
		if err := sess.Begin(); err != nil {
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
			sess.Produce(ctx, &kgo.Record{Topic: t.Events, Partition: r.Partition, Key: r.Key, Value: r.Value}, done)
			sess.Produce(ctx, &kgo.Record{Topic: t.Snapshots, Partition: r.Partition, Key: r.Key, Value: r.Value}, done)
			sess.Produce(ctx, &kgo.Record{Topic: t.Replies, Partition: topology.Partition(id, replies), Key: id, Value: r.Value}, done)
		})
		endCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		if err := sess.Client().Flush(endCtx); err != nil {
			done(nil, err)
		}
		mu.Lock()
		produceErr := failed
		mu.Unlock()
		try := kgo.TryCommit
		if produceErr != nil {
			try = kgo.TryAbort
		}
		_, err := sess.End(endCtx, try)
		cancel()
		switch {
		case err != nil:
			return fmt.Errorf("reference %s: end transaction: %w", txnID, err)
		case produceErr != nil:
			return fmt.Errorf("reference %s: produce: %w", txnID, produceErr)
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
