package processor

import (
	"errors"
	"testing"

	"github.com/deciderhq/decider/examples/accounts"
	"github.com/deciderhq/decider/schemas"
	"github.com/twmb/franz-go/pkg/kgo"
)

// The worker's whole read path of a command (headers, framing, schema,
// body) never panics and either refuses with a reason or yields a command.
func FuzzReadCommand(f *testing.F) {
	agg, err := accounts.Aggregate(4)
	if err != nil {
		f.Fatal(err)
	}
	_, valid, _ := agg.Schemas().Encode(accounts.Deposit{Amount: 100})
	f.Add([]byte("acc-1"), "decider.examples.accounts.Deposit", "1.0", "7", "2026-11-23T10:00:00Z", valid)
	f.Add([]byte(""), "", "", "x", "soon", []byte{0xC3, 0x01})
	f.Add([]byte("a"), "decider.examples.accounts.OpenAccount", "1.0", "", "", append(valid[:10:10], 0xFF, 0xFF, 0xFF))
	f.Fuzz(func(t *testing.T, key []byte, typ, spec, expected, deadline string, value []byte) {
		r := &kgo.Record{Key: key, Value: value, Headers: []kgo.RecordHeader{
			{Key: schemas.HeaderSpecVersion, Value: []byte(spec)},
			{Key: schemas.HeaderID, Value: []byte("c")},
			{Key: schemas.HeaderType, Value: []byte(typ)},
			{Key: schemas.HeaderSource, Value: []byte("fuzz")},
			{Key: schemas.HeaderExpectedVersion, Value: []byte(expected)},
			{Key: schemas.HeaderDeadline, Value: []byte(deadline)},
		}}
		var c command
		if err := parseCommand(&c, r, 1<<20); err != nil {
			var ie *invalidError
			if !errors.As(err, &ie) || ie.reason == "" {
				t.Fatalf("refusal without a reason: %v", err)
			}
			return
		}
		if _, err := agg.DecodeCommand(c.typ, r.Value); err != nil {
			if ie := decodeError(err).(*invalidError); ie.reason == "" {
				t.Fatalf("decode error without a reason: %v", err)
			}
		}
	})
}
