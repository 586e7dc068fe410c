package statestore

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Restore keeps exactly what kgo's read_committed consumer sees of a
// partition: producers with each compression codec write transactions
// that interleave in the log, committed and aborted, with tombstones, in
// batches of one to four records; the restore reads one batch per fetch,
// writes a chunk per record, and the partition's leader moves to another
// broker every few chunks.
func TestRestoreMatchesReadCommitted(t *testing.T) {
	ctx := context.Background()
	c, err := kfake.NewCluster(kfake.NumBrokers(3), kfake.SeedTopics(1, topic))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	seeds := []kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...)}
	codecs := []kgo.CompressionCodec{kgo.NoCompression(), kgo.GzipCompression(), kgo.SnappyCompression(), kgo.Lz4Compression(), kgo.ZstdCompression()}
	producers := make([]*kgo.Client, len(codecs))
	for i, codec := range codecs {
		cl, err := kgo.NewClient(append(seeds, kgo.TransactionalID(fmt.Sprint("writer-", i)), kgo.DefaultProduceTopic(topic),
			kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.ProducerBatchCompression(codec))...)
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		producers[i] = cl
	}
	rng := rand.New(rand.NewPCG(6, 7))
	for round := range 6 {
		for _, p := range producers {
			if err := p.BeginTransaction(); err != nil {
				t.Fatal(err)
			}
		}
		for n := range 20 {
			recs := make([]*kgo.Record, 1+rng.IntN(4))
			for i := range recs {
				recs[i] = &kgo.Record{Key: fmt.Appendf(nil, "k%d", rng.IntN(15)), Value: fmt.Appendf(nil, "v%d.%d.%d %0100d", round, n, i, 0)}
				if rng.IntN(8) == 0 {
					recs[i].Value = nil
				}
			}
			if err := producers[rng.IntN(len(producers))].ProduceSync(ctx, recs...).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
		for _, i := range rng.Perm(len(producers)) {
			if err := producers[i].EndTransaction(ctx, kgo.TransactionEndTry(rng.IntN(3) > 0)); err != nil {
				t.Fatal(err)
			}
		}
	}
	records, end := readCommitted(t, seeds)
	want := map[string]string{}
	for _, r := range records {
		if r.value == "<nil>" {
			delete(want, r.key)
		} else {
			want[r.key] = r.value
		}
	}
	moveLeader := func() {
		if err := c.MoveTopicPartition(topic, 0, (c.LeaderFor(topic, 0)+1)%3); err != nil {
			t.Error(err)
		}
	}

	// Every record the reader hands on, in order, from the start (a batch
	// per fetch, the leader moved every 20 records) and from every eleventh
	// offset (inside batches too, as a restore resumes from a checkpoint).
	cl, err := kgo.NewClient(seeds...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for from := int64(0); from < end; from += 11 {
		maxBytes := int32(1 << 20)
		if from == 0 {
			maxBytes = 1
		}
		rd := newPartitionReader(cl, topic, 0, from, maxBytes)
		var got []readRecord
		for rd.next < end {
			if err := rd.read(ctx, func(offset int64, key, value []byte) error {
				got = append(got, newReadRecord(offset, key, value))
				if from == 0 && len(got)%20 == 0 {
					moveLeader()
				}
				return nil
			}); err != nil {
				t.Fatalf("read from %d: %v", from, err)
			}
		}
		i, _ := slices.BinarySearchFunc(records, from, func(r readRecord, o int64) int { return cmp.Compare(r.offset, o) })
		if !slices.Equal(got, records[i:]) {
			t.Fatalf("from %d, read %v\nwant %v", from, got, records[i:])
		}
	}

	s, err := Open(t.TempDir(), &Options{RestoreBuffer: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	chunks, moves := 0, 0
	src := Changelog{Topic: topic, Kafka: seeds, Progress: func(int) {
		if chunks++; chunks%7 == 0 {
			moveLeader()
			moves++
		}
	}}
	st, err := s.Restore(ctx, src, "account", 0)
	if err != nil {
		t.Fatal(err)
	}
	if st.To != end || moves == 0 {
		t.Fatalf("restore %+v after %d leader moves: want to reach %d, with moves", st, moves, end)
	}
	for k := range 15 {
		key := fmt.Sprint("k", k)
		w, ok := want[key]
		if !ok {
			w = "<none>"
		}
		if got := get(t, s, key); got != w {
			t.Errorf("%s = %q, want %q", key, got, w)
		}
	}
}

// readRecord is a record as a reader hands it on.
type readRecord struct {
	offset     int64
	key, value string // value "<nil>": a tombstone
}

func newReadRecord(offset int64, key, value []byte) readRecord {
	r := readRecord{offset, string(key), string(value)}
	if value == nil {
		r.value = "<nil>"
	}
	return r
}

// readCommitted reads partition 0 of the topic to its end with kgo's
// read_committed consumer and returns its records but the control records,
// and the end offset.
func readCommitted(t *testing.T, seeds []kgo.Opt) ([]readRecord, int64) {
	t.Helper()
	ctx := context.Background()
	cl, err := kgo.NewClient(append(seeds, kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.KeepControlRecords(),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {0: kgo.NewOffset().AtStart()}}))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	end, _ := ends.Lookup(topic, 0)
	var records []readRecord
	for next := int64(0); next < end.Offset; {
		fs := cl.PollFetches(ctx)
		if err := fs.Err(); err != nil {
			t.Fatal(err)
		}
		fs.EachRecord(func(r *kgo.Record) {
			next = r.Offset + 1
			if !r.Attrs.IsControl() {
				records = append(records, newReadRecord(r.Offset, r.Key, r.Value))
			}
		})
	}
	return records, end.Offset
}

// testBatch is a record batch of producer 3 at offset first with attrs,
// holding records (their lengths and the batch's length and CRC filled
// in), compressed with snappy if compress.
func testBatch(first int64, attrs int16, compress bool, records ...kmsg.Record) []byte {
	b := kmsg.RecordBatch{FirstOffset: first, Magic: 2, NumRecords: int32(len(records)), Attributes: attrs,
		ProducerID: 3, LastOffsetDelta: int32(len(records) - 1)}
	for _, r := range records {
		r.Length = int32(len(r.AppendTo(nil)) - 1)
		b.Records = r.AppendTo(b.Records)
	}
	if compress {
		c, _ := kgo.DefaultCompressor(kgo.SnappyCompression())
		var codec kgo.CompressionCodecType
		b.Records, codec = c.Compress(new(bytes.Buffer), b.Records)
		b.Attributes |= int16(codec)
	}
	raw := b.AppendTo(nil)
	binary.BigEndian.PutUint32(raw[8:], uint32(len(raw)-12))
	binary.BigEndian.PutUint32(raw[17:], crc32.Checksum(raw[21:], crc32c))
	return raw
}

// aOneBTombstone is a transactional batch at 0: a=1 and a tombstone of b.
func aOneBTombstone() []byte {
	return testBatch(0, transactional, false, kmsg.Record{Key: []byte("a"), Value: []byte("1")}, kmsg.Record{OffsetDelta: 1, Key: []byte("b")})
}

// Bytes that are not record batches (cut short, a wrong CRC, a count of
// records the batch does not hold, a record longer than its batch) are an
// error or are left for the next fetch, never a panic or a record made up.
func FuzzRecordBatches(f *testing.F) {
	raw := aOneBTombstone()
	f.Add(raw, int64(0), int64(0))
	f.Add(raw, int64(1), int64(5))
	f.Add(raw[:len(raw)-3], int64(0), int64(1))
	// Committed a=1, b deleted; an aborted c=1 and its abort marker; a
	// compressed d.
	log := slices.Concat(raw,
		testBatch(2, transactional, false, kmsg.Record{Key: []byte("c"), Value: []byte("1")}),
		testBatch(3, transactional|control, false, kmsg.Record{Key: []byte{0, 0, 0, 0}, Value: []byte{0, 0, 0, 0, 0, 0}}),
		testBatch(4, 0, true, kmsg.Record{Key: []byte("d"), Value: bytes.Repeat([]byte("1"), 64)}))
	f.Add(log, int64(0), int64(2))
	f.Fuzz(func(t *testing.T, in []byte, next, abortedFrom int64) {
		if len(in) >= 21 && in[0]&1 == 0 { // mostly one batch with its length and CRC right, to reach the records
			binary.BigEndian.PutUint32(in[8:], uint32(len(in)-12))
			binary.BigEndian.PutUint32(in[17:], crc32.Checksum(in[21:], crc32c))
		}
		r := &partitionReader{next: next, decomp: kgo.DefaultDecompressor()}
		rp := &kmsg.FetchResponseTopicPartition{RecordBatches: in,
			AbortedTransactions: []kmsg.FetchResponseTopicPartitionAbortedTransaction{{ProducerID: 3, FirstOffset: abortedFrom}}}
		_ = r.batches(rp, func(offset int64, key, value []byte) error {
			if offset < next {
				t.Fatalf("record at %d handed on, before the next offset %d", offset, next)
			}
			return nil
		})
	})
}

// A response whose first batch is cut short moves the reader nowhere: an
// error, not a fetch of the same again and again. A whole batch is read.
func TestRecordBatchesProgress(t *testing.T) {
	raw := aOneBTombstone()
	r := &partitionReader{decomp: kgo.DefaultDecompressor()}
	if err := r.batches(&kmsg.FetchResponseTopicPartition{RecordBatches: raw[:len(raw)-1]}, nil); err == nil {
		t.Fatal("a batch cut short was not an error")
	}
	var got []string
	err := r.batches(&kmsg.FetchResponseTopicPartition{RecordBatches: raw}, func(offset int64, key, value []byte) error {
		got = append(got, fmt.Sprintf("%d:%s=%v", offset, key, value))
		return nil
	})
	if want := []string{"0:a=[49]", "1:b=[]"}; err != nil || fmt.Sprint(got) != fmt.Sprint(want) || r.next != 2 {
		t.Fatalf("read %v, next %d, %v; want %v, next 2", got, r.next, err, want)
	}
}

// A restore makes room for a fetch's records at once, but never for more
// than its buffer holds: the counts come from batch headers not yet
// checked.
func TestRestoreChunkReserveIsBounded(t *testing.T) {
	var c restoreChunk
	c.reserve("account", 1<<30, 1000)
	if cap(c.entries) < 1000 || cap(c.entries) > 2000 || cap(c.keys) > 2000*64 {
		t.Fatalf("reserved %d entries and %d key bytes for a bound of 1000", cap(c.entries), cap(c.keys))
	}
	c.add("account", 0, []byte("a"), nil)
	c.reserve("account", 1<<30, 1000)
	if cap(c.entries) > 2000 {
		t.Fatalf("reserved %d entries again", cap(c.entries))
	}
}
