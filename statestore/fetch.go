package statestore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kbin"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// partitionReader reads one partition read_committed from an offset, with
// Fetch requests of its own: each committed record's key and value reach
// the caller as slices of the fetched batch, with no kgo.Record per
// record. (A restore only needs the key and value; making and collecting
// kgo's Records was a quarter of its CPU.) It does for read_committed what
// kgo's consumer does (kgo.ProcessFetchPartition): records of the aborted
// transactions a response lists are skipped until their producer's abort
// marker, control batches are not handed on, every batch's CRC is checked,
// and a batch moves the next offset past its end even when compaction
// removed its last records (KAFKA-5443).
type partitionReader struct {
	cl       *kgo.Client
	topic    string
	p        int32
	maxBytes int32
	next     int64 // the offset to fetch from

	id     [16]byte // the topic's ID, for Fetch v13+
	leader int32    // -1: look it up
	decomp kgo.Decompressor

	// reserve, if set, is told how many records a response's batches
	// hold before any of them is handed on.
	reserve func(records int)
}

// Bounds of a reader's retries of a failing fetch.
const (
	fetchRetries = 8
	fetchBackoff = 50 * time.Millisecond
)

func newPartitionReader(cl *kgo.Client, topic string, p int32, from int64, maxBytes int32) *partitionReader {
	return &partitionReader{cl: cl, topic: topic, p: p, maxBytes: maxBytes,
		next: from, leader: -1, decomp: kgo.DefaultDecompressor()}
}

// read fetches once from the next offset and calls each with every
// committed record it returns (value nil for a tombstone), in offset
// order; it moves the next offset past what it read. A fetch may return
// nothing (a transaction open below the high watermark); read then returns
// after the broker's wait. Errors that may clear by themselves (a leader
// moving or gone) are retried a few times with the leader looked up
// again; an offset out of range is an error, never a reset.
func (r *partitionReader) read(ctx context.Context, each func(offset int64, key, value []byte) error) error {
	var err error
	for attempt := range fetchRetries {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(fetchBackoff << (attempt - 1)):
			}
		}
		var rp *kmsg.FetchResponseTopicPartition
		if rp, err = r.fetch(ctx); err == nil {
			return r.batches(rp, each)
		}
		// Kafka's answers say whether to try again; a connection that
		// failed (a leader gone) is tried again at the leader looked up
		// anew.
		var ke *kerr.Error
		if ctx.Err() != nil || errors.As(err, &ke) && !ke.Retriable {
			return err
		}
		r.leader = -1
	}
	return err
}

// fetch sends one Fetch request for the partition to its leader.
func (r *partitionReader) fetch(ctx context.Context) (*kmsg.FetchResponseTopicPartition, error) {
	if r.leader < 0 {
		if err := r.lookup(ctx); err != nil {
			return nil, err
		}
	}
	req := kmsg.NewPtrFetchRequest()
	req.MaxWaitMillis = 500
	req.MinBytes = 1
	// req.MaxBytes stays unbounded: the partition's bound cuts the
	// response. (kfake leaves the aborted transactions out of a response
	// it cut at the request's bound.)
	req.IsolationLevel = 1 // read_committed
	rt := kmsg.NewFetchRequestTopic()
	rt.Topic, rt.TopicID = r.topic, r.id
	rp := kmsg.NewFetchRequestTopicPartition()
	rp.Partition, rp.FetchOffset, rp.PartitionMaxBytes = r.p, r.next, r.maxBytes
	rt.Partitions = append(rt.Partitions, rp)
	req.Topics = append(req.Topics, rt)
	kresp, err := r.cl.Broker(int(r.leader)).RetriableRequest(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("fetch from broker %d: %w", r.leader, err)
	}
	resp := kresp.(*kmsg.FetchResponse)
	if err := kerr.ErrorForCode(resp.ErrorCode); err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	for i := range resp.Topics {
		for j := range resp.Topics[i].Partitions {
			if got := &resp.Topics[i].Partitions[j]; got.Partition == r.p {
				if err := kerr.ErrorForCode(got.ErrorCode); err != nil {
					return nil, fmt.Errorf("fetch at %d: %w", r.next, err)
				}
				return got, nil
			}
		}
	}
	return nil, fmt.Errorf("fetch at %d: the response has no partition %d", r.next, r.p)
}

// lookup asks the cluster for the partition's leader and the topic's ID.
// (Not through kadm, whose Metadata answers from kgo's cache: a leader
// that just moved would be asked again and again.)
func (r *partitionReader) lookup(ctx context.Context) error {
	req := kmsg.NewPtrMetadataRequest()
	rt := kmsg.NewMetadataRequestTopic()
	rt.Topic = kmsg.StringPtr(r.topic)
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, r.cl)
	if err != nil {
		return fmt.Errorf("metadata: %w", err)
	}
	for _, t := range resp.Topics {
		if t.Topic == nil || *t.Topic != r.topic {
			continue
		}
		if err := kerr.ErrorForCode(t.ErrorCode); err != nil {
			return fmt.Errorf("metadata of %s: %w", r.topic, err)
		}
		for _, p := range t.Partitions {
			if p.Partition != r.p {
				continue
			}
			if p.Leader < 0 {
				return fmt.Errorf("metadata of %s/%d: %w", r.topic, r.p, kerr.LeaderNotAvailable)
			}
			r.id, r.leader = t.TopicID, p.Leader
			return nil
		}
	}
	return fmt.Errorf("metadata of %s/%d: %w", r.topic, r.p, kerr.UnknownTopicOrPartition)
}

var crc32c = crc32.MakeTable(crc32.Castagnoli)

// Attributes of a record batch.
const (
	codecMask     = 0b0000_0111
	transactional = 0b0001_0000
	control       = 0b0010_0000
)

// batches hands each the committed records of a partition's fetched
// record batches. A batch cut short at the end of the response (a broker
// fills up to the byte limit) is left for the next fetch; a response that
// moves the next offset nowhere is an error, not a loop.
func (r *partitionReader) batches(rp *kmsg.FetchResponseTopicPartition, each func(offset int64, key, value []byte) error) error {
	aborted := abortedTxnsOf(rp.AbortedTransactions)
	in, from := rp.RecordBatches, r.next
	if r.reserve != nil {
		r.reserve(recordsIn(in))
	}
	for {
		raw, rest := nextBatch(in)
		if raw == nil {
			break
		}
		in = rest
		if magic := raw[16]; magic != 2 {
			return fmt.Errorf("batch at %d: unknown magic %d", int64(binary.BigEndian.Uint64(raw)), magic)
		}
		var b kmsg.RecordBatch
		if err := b.ReadFrom(raw); err != nil {
			return fmt.Errorf("batch at %d: %w", int64(binary.BigEndian.Uint64(raw)), err)
		}
		if crc32.Checksum(raw[21:], crc32c) != uint32(b.CRC) {
			return fmt.Errorf("batch at %d: CRC mismatch", b.FirstOffset)
		}
		end := b.FirstOffset + int64(b.LastOffsetDelta) + 1
		if end <= r.next {
			continue
		}
		if err := r.batch(&b, aborted, each); err != nil {
			return fmt.Errorf("batch at %d: %w", b.FirstOffset, err)
		}
		r.next = end
	}
	if r.next == from && len(rp.RecordBatches) > 0 {
		// A broker returns the batch at the offset asked for whole,
		// whatever the byte bound: fetching again would get the same.
		return fmt.Errorf("fetch at %d: %d bytes and no whole batch past it", from, len(rp.RecordBatches))
	}
	return nil
}

// nextBatch returns the first whole batch in in (nil if there is none: in
// ends or is cut short) and the bytes after it; it checks only the length.
func nextBatch(in []byte) (batch, rest []byte) {
	if len(in) < 61 { // a v2 batch header
		return nil, nil
	}
	length := int64(int32(binary.BigEndian.Uint32(in[8:12]))) + 12
	if length < 61 || int64(len(in)) < length {
		return nil, nil
	}
	return in[:length], in[length:]
}

// recordsIn adds up the record counts in the headers of the batches in
// in, which are not checked yet.
func recordsIn(in []byte) int {
	n := 0
	for raw, rest := nextBatch(in); raw != nil; raw, rest = nextBatch(rest) {
		n += max(0, int(int32(binary.BigEndian.Uint32(raw[57:61]))))
	}
	return n
}

// batch hands each the records of one batch at or after the next offset,
// unless it is a control batch or belongs to an aborted transaction.
func (r *partitionReader) batch(b *kmsg.RecordBatch, aborted abortedTxns, each func(offset int64, key, value []byte) error) error {
	abort := aborted.covers(b)
	if abort && b.Attributes&control == 0 {
		return nil
	}
	records := b.Records
	if codec := kgo.CompressionCodecType(b.Attributes & codecMask); codec != 0 {
		var err error
		if records, err = r.decomp.Decompress(records, codec); err != nil {
			return fmt.Errorf("decompress: %w", err)
		}
	}
	if b.NumRecords < 0 || int(b.NumRecords) > len(records) {
		return fmt.Errorf("%d records in %d bytes", b.NumRecords, len(records))
	}
	for range b.NumRecords {
		rec, rest, err := nextRecord(records)
		if err != nil {
			return err
		}
		records = rest
		switch {
		case b.Attributes&control != 0:
			// A control record's key is an int16 version and an int16
			// type: 0 marks the end of an aborted transaction. One
			// marker ends at most one of its producer's transactions.
			if abort && len(rec.key) >= 4 && rec.key[2] == 0 && rec.key[3] == 0 {
				aborted.end(b.ProducerID)
				return nil
			}
		case b.FirstOffset+int64(rec.offsetDelta) < r.next:
		default:
			if err := each(b.FirstOffset+int64(rec.offsetDelta), rec.key, rec.value); err != nil {
				return err
			}
		}
	}
	return nil
}

// record is what a restore reads of one record of a batch.
type record struct {
	offsetDelta int32
	key, value  []byte // nil: absent
}

// nextRecord reads the record in at the start of in (a batch's records,
// decompressed) and returns the bytes after it.
func nextRecord(in []byte) (record, []byte, error) {
	length, n := kbin.Varint(in)
	if n <= 0 || length < 0 || int(length) > len(in)-n {
		return record{}, nil, errors.New("truncated record")
	}
	body, rest := in[n:n+int(length)], in[n+int(length):]
	rd := kbin.Reader{Src: body}
	rd.Int8()    // attributes: unused
	rd.Varlong() // timestamp delta
	rec := record{offsetDelta: rd.Varint()}
	rec.key = rd.VarintBytes()
	rec.value = rd.VarintBytes()
	if !rd.Ok() {
		return record{}, nil, errors.New("truncated record")
	}
	return rec, rest, nil
}

// abortedTxns are the first offsets of the aborted transactions a fetch
// response lists, by producer, in ascending order: a transactional batch
// of a producer at or after its first listed offset is aborted, until the
// producer's abort marker ends that transaction.
type abortedTxns map[int64][]int64

func abortedTxnsOf(list []kmsg.FetchResponseTopicPartitionAbortedTransaction) abortedTxns {
	if len(list) == 0 {
		return nil
	}
	a := abortedTxns{}
	for _, t := range list {
		a[t.ProducerID] = append(a[t.ProducerID], t.FirstOffset)
	}
	for id := range a {
		slices.Sort(a[id]) // brokers need not list them in order
	}
	return a
}

func (a abortedTxns) covers(b *kmsg.RecordBatch) bool {
	firsts := a[b.ProducerID]
	return b.Attributes&transactional != 0 && len(firsts) > 0 && b.FirstOffset >= firsts[0]
}

func (a abortedTxns) end(producer int64) {
	if firsts := a[producer]; len(firsts) > 1 {
		a[producer] = firsts[1:]
	} else {
		delete(a, producer)
	}
}
