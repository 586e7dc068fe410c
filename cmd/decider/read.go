package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// span is the offsets [start, end) of one partition to read.
type span struct{ start, end int64 }

type topicPartition struct {
	topic     string
	partition int32
}

// listSpans returns, per partition of topic, the span from its log start
// offset to its last stable offset: what a read_committed reader can read
// now.
func listSpans(ctx context.Context, adm *kadm.Client, topic string) (map[int32]span, error) {
	starts, err := adm.ListStartOffsets(ctx, topic)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("list start offsets of %s: %w", topic, err)
	}
	ends, err := adm.ListCommittedOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("list end offsets of %s: %w", topic, err)
	}
	spans := map[int32]span{}
	ends.Each(func(o kadm.ListedOffset) {
		s := span{end: o.Offset}
		if so, ok := starts.Lookup(topic, o.Partition); ok {
			s.start = so.Offset
		}
		spans[o.Partition] = s
	})
	return spans, nil
}

// readSpans reads spans of topic partitions, read_committed, calling
// handle for every record (not control records) in partition order; records
// of different partitions interleave. handle must not keep r. An end of
// math.MaxInt64 reads on until ctx ends.
//
// When idle is positive and a poll gets nothing for that long, readSpans
// stops and returns the partitions it had not finished with their ends:
// trailing records of an aborted transaction while another one is open are
// never delivered (a live app). With idle zero it waits for as long as ctx
// lets it.
func readSpans(ctx context.Context, kafka []kgo.Opt, spans map[string]map[int32]span, idle time.Duration, handle func(r *kgo.Record)) (stalled map[topicPartition]int64, err error) {
	offsets := map[string]map[int32]kgo.Offset{}
	pending := map[topicPartition]int64{}
	for topic, ps := range spans {
		for p, s := range ps {
			if s.end <= s.start {
				continue
			}
			if offsets[topic] == nil {
				offsets[topic] = map[int32]kgo.Offset{}
			}
			offsets[topic][p] = kgo.NewOffset().At(s.start)
			pending[topicPartition{topic, p}] = s.end
		}
	}
	if len(pending) == 0 {
		return nil, nil
	}
	cl, err := kgo.NewClient(append(kafka[:len(kafka):len(kafka)],
		kgo.ConsumePartitions(offsets),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.KeepControlRecords(),
		kgo.FetchMaxBytes(32<<20),
		kgo.FetchMaxPartitionBytes(8<<20),
		kgo.FetchMaxWait(500*time.Millisecond),
	)...)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	for len(pending) > 0 {
		pctx, cancel := ctx, context.CancelFunc(func() {})
		if idle > 0 {
			pctx, cancel = context.WithTimeout(ctx, idle)
		}
		f := cl.PollFetches(pctx)
		cancel()
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if f.NumRecords() == 0 && pctx.Err() != nil {
			return pending, nil
		}
		var ferr error
		f.EachError(func(topic string, p int32, err error) {
			if ferr == nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
				ferr = fmt.Errorf("read %s/%d: %w", topic, p, err)
			}
		})
		if ferr != nil {
			return nil, ferr
		}
		f.EachPartition(func(fp kgo.FetchTopicPartition) {
			tp := topicPartition{fp.Topic, fp.Partition}
			end, ok := pending[tp]
			if !ok {
				return
			}
			for _, r := range fp.Records {
				if r.Offset >= end {
					delete(pending, tp)
					return
				}
				if !r.Attrs.IsControl() {
					handle(r)
				}
				if r.Offset+1 >= end {
					delete(pending, tp)
					return
				}
			}
		})
	}
	return nil, nil
}
