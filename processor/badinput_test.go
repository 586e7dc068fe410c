package processor

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/deciderhq/decider/examples/accounts"
	"github.com/deciderhq/decider/schemas"
	"github.com/deciderhq/decider/topology"
	"github.com/twmb/franz-go/pkg/kgo"
)

func withHeader(r *kgo.Record, key, value string) *kgo.Record {
	for i, h := range r.Headers {
		if h.Key == key {
			r.Headers[i].Value = []byte(value)
			return r
		}
	}
	r.Headers = append(r.Headers, kgo.RecordHeader{Key: key, Value: []byte(value)})
	return r
}

// Bad input gets a clear INVALID reply and a dead-letter copy; caller
// headers give CONFLICT and EXPIRED; a misrouted command is decided once on
// its own partition; and the partition goes on.
func TestBadInputAndCallerHeaders(t *testing.T) {
	e := newEnv(t, 4)
	w := e.start(t.TempDir(), "w1")
	defer w.stop()
	e.produce(e.command("acc", "open", accounts.OpenAccount{Owner: "ada"}))

	dep := func(cmdID string) *kgo.Record { return e.command("acc", cmdID, accounts.Deposit{Amount: 5}) }
	noKey := dep("no-key")
	noKey.Key = nil
	wrongPartition := dep("misrouted")
	wrongPartition.Partition = (wrongPartition.Partition + 1) % e.agg.Partitions()
	truncated := dep("truncated")
	truncated.Value = truncated.Value[:len(truncated.Value)-1]
	garbage := dep("garbage")
	garbage.Value = []byte("not avro")
	unknownFP := dep("unknown-schema")
	unknownFP.Value = append([]byte{0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8}, 0)
	var noSource []kgo.RecordHeader
	for _, h := range dep("x").Headers {
		if h.Key != schemas.HeaderSource {
			noSource = append(noSource, h)
		}
	}
	missingSource := dep("no-source")
	missingSource.Headers = noSource

	cases := []struct {
		rec    *kgo.Record
		status schemas.Status
		reason string
		dlq    bool
	}{
		{noKey, schemas.Invalid, "missing_key", true},
		{withHeader(dep("unknown-type"), schemas.HeaderType, "decider.examples.accounts.Nope"), schemas.Invalid, "unknown_type", true},
		{withHeader(dep("event-as-command"), schemas.HeaderType, "decider.examples.accounts.Deposited"), schemas.Invalid, "unknown_type", true},
		{garbage, schemas.Invalid, "bad_framing", true},
		{unknownFP, schemas.Invalid, "unknown_schema", true},
		{truncated, schemas.Invalid, "bad_payload", true},
		{missingSource, schemas.Invalid, "missing_header", true},
		{withHeader(dep("bad-spec"), schemas.HeaderSpecVersion, "0.3"), schemas.Invalid, "bad_specversion", true},
		{withHeader(dep("bad-version"), schemas.HeaderExpectedVersion, "one"), schemas.Invalid, "bad_header", true},
		{withHeader(dep("conflict"), schemas.HeaderExpectedVersion, "7"), schemas.Conflict, "version_mismatch", false},
		{withHeader(dep("expired"), schemas.HeaderDeadline, time.Now().Add(-time.Minute).Format(time.RFC3339)), schemas.Expired, "deadline_passed", false},
		{withHeader(dep("in-time"), schemas.HeaderExpectedVersion, "1"), schemas.Accepted, "", false},
		{wrongPartition, schemas.Accepted, "", false},
		{withHeader(dep("last"), schemas.HeaderDeadline, time.Now().Add(time.Hour).Format(time.RFC3339)), schemas.Accepted, "", false},
	}
	for _, c := range cases {
		e.produce(c.rec)
	}
	replies := e.waitReplies(1 + len(cases))
	wantDLQ := map[string]string{}
	version := int64(1)
	accepted := map[int64]bool{}
	for _, c := range cases {
		id := header(c.rec, schemas.HeaderID)
		got := replies[id]
		if got.Status != c.status || got.Reason != c.reason {
			t.Errorf("%s: reply %+v, want %s %q", id, got, c.status, c.reason)
		}
		if c.status == schemas.Accepted {
			version++
			accepted[got.Version] = true
		}
		if c.status == schemas.Conflict && got.Version != 1 {
			t.Errorf("conflict reply carries version %d, want the current 1", got.Version)
		}
		if c.dlq {
			wantDLQ[id] = c.reason
		}
	}
	for _, r := range e.readAll(e.topics.DLQ) {
		id := header(r, schemas.HeaderID)
		if reason := header(r, schemas.HeaderDLQReason); reason != wantDLQ[id] {
			t.Errorf("dead letter of %s has reason %q, want %q", id, reason, wantDLQ[id])
		}
		if header(r, schemas.HeaderDLQDetail) == "" || header(r, schemas.HeaderDLQTopic) != e.topics.Commands {
			t.Errorf("dead letter of %s lacks its detail or origin: %v", id, r.Headers)
		}
		if off, err := strconv.ParseInt(header(r, schemas.HeaderDLQOffset), 10, 64); err != nil || off < 0 {
			t.Errorf("dead letter of %s has offset header %q", id, header(r, schemas.HeaderDLQOffset))
		}
		delete(wantDLQ, id)
	}
	if len(wantDLQ) != 0 {
		t.Errorf("no dead letter for %v", wantDLQ)
	}
	for v := int64(2); v <= version; v++ {
		if !accepted[v] {
			t.Errorf("no command was accepted at version %d: %v", v, accepted)
		}
	}
	events := e.checkEvents()["acc"]
	if int64(len(events)) != version {
		t.Fatalf("%d events for acc, want %d (the misrouted command decided once)", len(events), version)
	}
	if p := topology.Partition([]byte("acc"), e.agg.Partitions()); wrongPartition.Partition == p {
		t.Fatal("test bug: the misrouted command was on its right partition")
	}
}

// A command whose event or snapshot would exceed the record limit is FAILED
// (too_large) and dead-lettered; it does not become a record the broker
// refuses, which would fail every transaction of the partition.
func TestTooLargeOutputIsRefused(t *testing.T) {
	e := newEnv(t, 2)
	w := e.start(t.TempDir(), "w1", func(c *Config) { c.MaxRecordBytes = 100_000 })
	defer w.stop()
	big := strings.Repeat("x", 200_000)
	longKey := e.command(strings.Repeat("k", 2000), "long-key", accounts.OpenAccount{Owner: "k"})
	longID := e.command("big", strings.Repeat("i", 300), accounts.OpenAccount{Owner: "i"})
	e.produce(
		e.command("big", "big-open", accounts.OpenAccount{Owner: big}),
		longKey, longID,
		e.command("big", "small-open", accounts.OpenAccount{Owner: "ada"}),
	)
	replies := e.waitReplies(3) // the command whose id is too long to key a reply gets none
	if r := replies["long-key"]; r.Status != schemas.Invalid || r.Reason != "too_large" {
		t.Fatalf("long key: %+v, want INVALID too_large", r)
	}
	if r := replies["big-open"]; r.Status != schemas.Failed || r.Reason != "too_large" {
		t.Fatalf("big open: %+v, want FAILED too_large", r)
	}
	if r := replies["small-open"]; r.Status != schemas.Accepted || r.Version != 1 {
		t.Fatalf("the partition did not go on: %+v", r)
	}
	reasons := map[string]int{}
	for _, r := range e.readAll(e.topics.DLQ) {
		reasons[header(r, schemas.HeaderDLQReason)]++
		if header(r, schemas.HeaderDLQReason) == "too_large" && r.Value != nil {
			t.Errorf("a too_large dead letter carries its %d-byte payload", len(r.Value))
		}
	}
	if reasons["too_large"] != 2 || reasons["bad_header"] != 1 {
		t.Fatalf("dead letters by reason %v, want too_large 2 (output, key) and bad_header 1 (id)", reasons)
	}
}
