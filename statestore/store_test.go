package statestore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

const topic = "bank.account.snapshots"

func openStore(t testing.TB, dir string) *Store {
	t.Helper()
	s, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestApplyGetDrop(t *testing.T) {
	s := openStore(t, t.TempDir())
	if _, err := s.Get("account", 0, "a"); err != ErrNotFound {
		t.Fatalf("Get on empty store: %v, want ErrNotFound", err)
	}
	o := NewOverlay("account", 0, 0)
	o.Put("a", Entry{Value: []byte("a1")})
	o.Put("a", Entry{Value: []byte("a2")})
	o.Put("b", Entry{Value: []byte("b1")})
	other := NewOverlay("account", 1, 0)
	other.Put("a", Entry{Value: []byte("other")})
	if err := s.Apply(Commit{o, 7}, Commit{other, 3}); err != nil {
		t.Fatal(err)
	}
	if v, err := s.Get("account", 0, "a"); err != nil || string(v) != "a2" {
		t.Fatalf("Get a = %q, %v; want the last Put", v, err)
	}
	if c, _ := s.Checkpoint("account", 0); c != 7 {
		t.Fatalf("checkpoint = %d, want 7", c)
	}
	if c, _ := s.Checkpoint("account", 1); c != 3 {
		t.Fatalf("checkpoint of partition 1 = %d, want 3", c)
	}
	if err := s.Drop("account", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get("account", 0, "b"); err != ErrNotFound {
		t.Fatalf("Get after Drop: %v", err)
	}
	if c, _ := s.Checkpoint("account", 0); c != 0 {
		t.Fatalf("checkpoint after Drop = %d", c)
	}
	if v, _ := s.Get("account", 1, "a"); string(v) != "other" {
		t.Fatalf("Drop of partition 0 touched partition 1: %q", v)
	}
}

// changelog starts a broker with a two-partition snapshots topic.
func changelog(t *testing.T) (Changelog, *kgo.Client) {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, topic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	opts := []kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...)}
	cl, err := kgo.NewClient(append(opts, kgo.TransactionalID("test-writer"), kgo.DefaultProduceTopic(topic), kgo.RecordPartitioner(kgo.ManualPartitioner()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return Changelog{Topic: topic, Kafka: opts}, cl
}

// txn writes key=value pairs to partition 0 in one transaction and commits
// or aborts it.
func txn(t *testing.T, cl *kgo.Client, commit bool, kv ...string) {
	t.Helper()
	ctx := context.Background()
	if err := cl.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(kv); i += 2 {
		r := &kgo.Record{Key: []byte(kv[i]), Value: []byte(kv[i+1])}
		if kv[i+1] == "" {
			r.Value = nil
		}
		if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	if err := cl.EndTransaction(ctx, kgo.TransactionEndTry(commit)); err != nil {
		t.Fatal(err)
	}
}

func get(t *testing.T, s *Store, id string) string {
	t.Helper()
	v, err := s.Get("account", 0, id)
	if err == ErrNotFound {
		return "<none>"
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(v)
}

// Restore reads only committed snapshots, newest wins, tombstones delete,
// and a second restore continues from the checkpoint.
func TestRestore(t *testing.T) {
	src, w := changelog(t)
	ctx := context.Background()
	s := openStore(t, t.TempDir())

	txn(t, w, true, "a", "a1", "b", "b1")
	txn(t, w, false, "a", "aborted", "c", "aborted")
	txn(t, w, true, "a", "a2", "d", "d1", "d", "")
	txn(t, w, false, "b", "aborted at the tail")

	st, err := s.Restore(ctx, src, "account", 0)
	if err != nil {
		t.Fatal(err)
	}
	if st.Records != 5 || st.Full || st.From != 0 {
		t.Fatalf("stats %+v: want 5 committed records from 0", st)
	}
	for id, want := range map[string]string{"a": "a2", "b": "b1", "c": "<none>", "d": "<none>"} {
		if got := get(t, s, id); got != want {
			t.Errorf("%s = %q, want %q", id, got, want)
		}
	}
	cp, _ := s.Checkpoint("account", 0)
	if cp != st.To {
		t.Fatalf("checkpoint %d, want the end %d", cp, st.To)
	}

	txn(t, w, true, "b", "b2")
	st, err = s.Restore(ctx, src, "account", 0)
	if err != nil {
		t.Fatal(err)
	}
	if st.From != cp || st.Records != 1 {
		t.Fatalf("second restore %+v: want 1 record from %d", st, cp)
	}
	if got := get(t, s, "b"); got != "b2" {
		t.Fatalf("b = %q after second restore", got)
	}
	// Nothing new: restore is a no-op that reads nothing.
	if st, err = s.Restore(ctx, src, "account", 0); err != nil || st.Records != 0 {
		t.Fatalf("idle restore: %+v, %v", st, err)
	}
}

// A checkpoint below the log start (records deleted) drops the partition's
// state and restores it fully (KAFKA-20663); a checkpoint past the end (topic
// recreated) likewise.
func TestRestoreOutOfRangeCheckpoint(t *testing.T) {
	src, w := changelog(t)
	ctx := context.Background()
	s := openStore(t, t.TempDir())
	for i := range 5 {
		txn(t, w, true, fmt.Sprint("k", i), "v")
	}
	// Local state from an older life of the log: a stale aggregate and a
	// checkpoint of 2.
	o := NewOverlay("account", 0, 0)
	o.Put("stale", Entry{Value: []byte("x")})
	if err := s.Apply(Commit{o, 2}); err != nil {
		t.Fatal(err)
	}
	adm := kadm.NewClient(w)
	del := kadm.Offsets{}
	del.Add(kadm.Offset{Topic: topic, Partition: 0, At: 6})
	if _, err := adm.DeleteRecords(ctx, del); err != nil {
		t.Fatal(err)
	}
	st, err := s.Restore(ctx, src, "account", 0)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Full || st.From != 6 {
		t.Fatalf("stats %+v: want a full restore from the log start 6", st)
	}
	if got := get(t, s, "stale"); got != "<none>" {
		t.Fatalf("stale state survived a full restore: %q", got)
	}
	if got := get(t, s, "k4"); got != "v" {
		t.Fatalf("k4 = %q", got)
	}

	// Past the end.
	o.Put("stale", Entry{Value: []byte("x")})
	if err := s.Apply(Commit{o, 1000}); err != nil {
		t.Fatal(err)
	}
	if st, err = s.Restore(ctx, src, "account", 0); err != nil || !st.Full {
		t.Fatalf("checkpoint past the end: %+v, %v; want a full restore", st, err)
	}
	if got := get(t, s, "stale"); got != "<none>" {
		t.Fatalf("stale state survived: %q", got)
	}
}

// A restore written in many chunks (tables ingested one after another,
// overlapping each other and what Apply wrote) ends in the same state as
// one written at once: the last snapshot of each aggregate wins, a
// tombstone in a later chunk deletes one from an earlier chunk, and each
// chunk moves the checkpoint.
func TestRestoreInChunks(t *testing.T) {
	src, w := changelog(t)
	ctx := context.Background()
	txn(t, w, true, "a", "a1", "b", "b1", "c", "c1")
	txn(t, w, true, "a", "a2", "b", "", "a", "a3")
	txn(t, w, true, "d", "d1", "c", "c2")
	want := map[string]string{"a": "a3", "b": "<none>", "c": "c2", "d": "d1", "e": "e-applied"}
	for _, buffer := range []int{1, 30, 0} {
		t.Run(fmt.Sprint("buffer ", buffer), func(t *testing.T) {
			s, err := Open(t.TempDir(), &Options{RestoreBuffer: buffer})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			// In the memtable already: an aggregate the log does not have
			// and an older b; the checkpoint stays 0.
			o := NewOverlay("account", 0, 0)
			o.Put("e", Entry{Value: []byte("e-applied")})
			o.Put("b", Entry{Value: []byte("b-applied")})
			if err := s.Apply(Commit{o, 0}); err != nil {
				t.Fatal(err)
			}
			var progress []int
			st, err := s.Restore(ctx, Changelog{Topic: src.Topic, Kafka: src.Kafka, Progress: func(n int) { progress = append(progress, n) }}, "account", 0)
			if err != nil {
				t.Fatal(err)
			}
			if st.Records != 8 {
				t.Fatalf("restored %d records, want 8", st.Records)
			}
			for id, v := range want {
				if got := get(t, s, id); got != v {
					t.Errorf("%s = %q, want %q", id, got, v)
				}
			}
			if cp, _ := s.Checkpoint("account", 0); cp != st.To {
				t.Errorf("checkpoint %d, want the end %d", cp, st.To)
			}
			switch {
			case buffer == 1 && len(progress) != 9: // a chunk per record, and the end
				t.Errorf("progress %v: want a chunk per record", progress)
			case buffer == 0 && len(progress) != 1:
				t.Errorf("progress %v: want one chunk", progress)
			}
		})
	}
}

// A store closed cleanly keeps every write, with or without its WAL (without
// one, Close flushes the memtables, where the writes are only in memory).
func TestCloseKeepsWrites(t *testing.T) {
	for _, wal := range []bool{false, true} {
		t.Run(fmt.Sprintf("wal=%t", wal), func(t *testing.T) {
			dir := t.TempDir()
			s, err := Open(dir, &Options{WAL: wal})
			if err != nil {
				t.Fatal(err)
			}
			o := NewOverlay("account", 2, 0)
			o.Put("a", Entry{Value: []byte("a1")})
			if err := s.Apply(Commit{o, 5}); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			again := openStore(t, dir)
			if v, err := again.Get("account", 2, "a"); err != nil || string(v) != "a1" {
				t.Errorf("after a reopen Get = %q, %v; want a1", v, err)
			}
			if c, err := again.Checkpoint("account", 2); err != nil || c != 5 {
				t.Errorf("after a reopen checkpoint = %d, %v; want 5", c, err)
			}
		})
	}
}

// An overlay hands its entries on in the order their aggregates were first
// put, each with its latest entry.
func TestOverlayOrder(t *testing.T) {
	o := NewOverlay("account", 0, 0)
	for _, put := range [][2]string{{"b", "b1"}, {"a", "a1"}, {"c", "c1"}, {"b", "b2"}} {
		o.Put(put[0], Entry{Value: []byte(put[1])})
	}
	var got []string
	o.Each(func(id string, e Entry) { got = append(got, id+"="+string(e.Value)) })
	if fmt.Sprint(got) != "[b=b2 a=a1 c=c1]" || o.Len() != 3 {
		t.Errorf("Each = %v (Len %d), want [b=b2 a=a1 c=c1]", got, o.Len())
	}
	o.Reset()
	if _, ok := o.Get("b"); ok || o.Len() != 0 {
		t.Error("an entry outlived Reset")
	}
}

// EachID gives the ids of one partition's snapshots, and stops when its
// context ends.
func TestEachID(t *testing.T) {
	s, err := Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for p, ids := range [][]string{{"a", "b"}, {"c", "d", "e"}} {
		o := NewOverlay("account", int32(p), 0)
		for _, id := range ids {
			o.Put(id, Entry{Value: []byte("v-" + id)})
		}
		if err := s.Apply(Commit{Overlay: o, Next: 10}); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	if err := s.EachID(context.Background(), "account", 1, func(id []byte) { got = append(got, string(id)) }); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{"c", "d", "e"}) {
		t.Errorf("ids of partition 1: %q, want c d e", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.EachID(ctx, "account", 1, func([]byte) {}); !errors.Is(err, context.Canceled) {
		t.Errorf("EachID with its context ended: %v, want %v", err, context.Canceled)
	}
}
