package statestore

import (
	"bytes"
	"context"
	"strconv"
	"testing"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// snapshotValue is about the size of an account's snapshot record with a
// dedupe window of three replies.
var snapshotValue = bytes.Repeat([]byte("s"), 180)

func benchIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = "acc-" + strconv.Itoa(i)
	}
	return ids
}

// An overlay is written once and read about once per command of a batch.
func BenchmarkOverlay(b *testing.B) {
	const batch = 1000
	ids := benchIDs(batch)
	e := Entry{Value: snapshotValue}
	b.Run("put", func(b *testing.B) {
		o := NewOverlay("account", 0, 0)
		i := 0
		for b.Loop() {
			o.Put(ids[i%batch], e)
			i++
		}
	})
	b.Run("get", func(b *testing.B) {
		o := NewOverlay("account", 0, 0)
		for _, id := range ids {
			o.Put(id, e)
		}
		i := 0
		for b.Loop() {
			if _, ok := o.Get(ids[i%batch]); !ok {
				b.Fatal("missing")
			}
			i++
		}
	})
}

// Get is the lookup of an aggregate a batch has not touched yet; Apply
// writes a committed batch of 1000 snapshots with its checkpoint.
func BenchmarkStore(b *testing.B) {
	const aggregates, batch = 100000, 1000
	s := openStore(b, b.TempDir())
	ids := benchIDs(aggregates)
	for i := 0; i < aggregates; i += batch {
		o := NewOverlay("account", 0, 0)
		for _, id := range ids[i : i+batch] {
			o.Put(id, Entry{Value: snapshotValue})
		}
		if err := s.Apply(Commit{o, int64(i + batch)}); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("get", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, err := s.Get("account", 0, ids[(i*7919)%aggregates]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("get-missing", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.Get("account", 0, "nobody"); err != ErrNotFound {
				b.Fatal(err)
			}
		}
	})
	b.Run("apply-1000", func(b *testing.B) {
		next := int64(aggregates)
		for b.Loop() {
			o := NewOverlay("account", 1, 0)
			for _, id := range ids[next%aggregates : next%aggregates+batch] {
				o.Put(id, Entry{Value: snapshotValue})
			}
			next += batch
			if err := s.Apply(Commit{o, next}); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/snapshot")
	})
	// As a worker writes: the aggregates a batch touched, in the order
	// its commands came, spread over the store's aggregates.
	b.Run("apply-1000-random", func(b *testing.B) {
		i := 0
		for b.Loop() {
			o := NewOverlay("account", 0, batch)
			for range batch {
				o.Put(ids[(i*7919)%aggregates], Entry{Value: snapshotValue})
				i++
			}
			if err := s.Apply(Commit{o, int64(i)}); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/snapshot")
	})
}

// Restore of one partition of 100k snapshots from a broker in the test
// process, into a store that has none of them.
func BenchmarkRestore(b *testing.B) {
	const snapshots = 100000
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, topic))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	src := Changelog{Topic: topic, Kafka: []kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...)}}
	w, err := kgo.NewClient(append(src.Kafka, kgo.DefaultProduceTopic(topic))...)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for _, id := range benchIDs(snapshots) {
		w.Produce(ctx, &kgo.Record{Key: []byte(id), Value: snapshotValue}, func(_ *kgo.Record, err error) {
			if err != nil {
				b.Error(err)
			}
		})
	}
	if err := w.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	w.Close()
	s := openStore(b, b.TempDir())
	typ := 0
	for b.Loop() {
		typ++ // a type the store has no checkpoint of: a full restore
		st, err := s.Restore(ctx, src, "account"+strconv.Itoa(typ), 0)
		if err != nil {
			b.Fatal(err)
		}
		if st.Records != snapshots {
			b.Fatalf("restored %d snapshots, want %d", st.Records, snapshots)
		}
	}
	b.ReportMetric(float64(b.N*snapshots)/b.Elapsed().Seconds(), "snapshots/s")
}
