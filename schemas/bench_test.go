package schemas_test

import (
	"fmt"
	"testing"

	"github.com/deciderhq/decider/examples/accounts"
	"github.com/deciderhq/decider/schemas"
)

// The codec's share of a command: decode it, encode its event, its reply
// and the aggregate's new snapshot, and decode that snapshot when the
// aggregate is next loaded from the store.

func BenchmarkCodec(b *testing.B) {
	reg, err := accounts.Registry()
	if err != nil {
		b.Fatal(err)
	}
	_, state, err := reg.Encode(accounts.Account{Opened: true, Owner: "ada", Balance: 700})
	if err != nil {
		b.Fatal(err)
	}
	reply := schemas.Reply{CommandID: "0123456789abcdef0123456789abcdef", AggregateID: "acc-1", Status: schemas.Accepted, Version: 3, Events: 1}
	snapshot := func(window int) schemas.Snapshot {
		s := schemas.Snapshot{AggregateID: "acc-1", Version: int64(window), CommandOffset: 12345, State: state}
		kept := reply
		kept.AggregateID = "" // as the worker keeps a window's replies
		for range window {
			s.Recent = append(s.Recent, kept)
		}
		return s
	}
	values := []struct {
		name string
		v    any
	}{
		{"command", accounts.Deposit{Amount: 100}},
		{"event", accounts.Deposited{Amount: 100, Balance: 700}},
		{"reply", reply},
		{"snapshot-window-3", snapshot(3)},
		{"snapshot-window-32", snapshot(32)},
	}
	for _, tc := range values {
		name, data, err := reg.Encode(tc.v)
		if err != nil {
			b.Fatal(err)
		}
		b.Run("encode/"+tc.name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, _, err := reg.Encode(tc.v); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("decode/"+tc.name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, err := reg.Decode(name, data); err != nil {
					b.Fatal(err)
				}
			}
		})
		if name != schemas.SnapshotName {
			continue
		}
		// The worker's readers of a snapshot: from a store (every reply
		// checked) and from its own cache (the window taken whole).
		for _, read := range []struct {
			name string
			fn   func([]byte) (schemas.Snapshot, int, []byte, error)
		}{{"read", reg.ReadSnapshot}, {"read-own", reg.ReadOwnSnapshot}} {
			b.Run(read.name+"/"+tc.name, func(b *testing.B) {
				b.SetBytes(int64(len(data)))
				for b.Loop() {
					if _, _, _, err := read.fn(data); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkFindReply searches a full dedupe window (32 replies with
// UUID-like command ids) for a command id it does not hold, as the worker
// does for almost every command, and for its oldest reply.
func BenchmarkFindReply(b *testing.B) {
	reg := schemas.NewRegistry()
	var bodies []byte
	id := func(i int) string { return fmt.Sprintf("%08x-7c1e-4b5a-9f3d-%012x", i, i*7919) }
	for i := range 32 {
		v, err := reg.AppendReply(nil, schemas.Reply{CommandID: id(i), Status: schemas.Accepted, Version: int64(i), Events: 1})
		if err != nil {
			b.Fatal(err)
		}
		bodies = append(bodies, v[schemas.FramingSize:]...)
	}
	for _, tc := range []struct {
		name, id string
		found    bool
	}{{"new", id(99), false}, {"oldest", id(0), true}} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				if _, ok := schemas.FindReply(bodies, tc.id); ok != tc.found {
					b.Fatal(ok)
				}
			}
		})
	}
}
