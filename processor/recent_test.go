package processor

import (
	"fmt"
	"testing"

	"github.com/deciderhq/decider/schemas"
)

// The dedupe window keeps exactly the newest size replies, in order, and
// holds at most twice that many, whether it was built by adds or loaded
// from a snapshot.
func TestRecentWindow(t *testing.T) {
	const size = 32
	r := schemas.NewRegistry()
	body := func(i int) []byte {
		_, v, err := r.Encode(schemas.Reply{CommandID: fmt.Sprint(i), AggregateID: "a", Status: schemas.Accepted, Version: int64(i)})
		if err != nil {
			t.Fatal(err)
		}
		return v[schemas.FramingSize:]
	}
	var l *recent
	for i := range 100 {
		l = l.add(body(i), size)
		if l.len() > 2*size {
			t.Fatalf("after %d adds the list holds %d nodes, want at most %d", i+1, l.len(), 2*size)
		}
	}
	pieces, n := l.appendBodies(nil, size)
	got := splitBodies(t, pieces)
	if n != size || len(got) != size || commandID(t, got[0]) != "68" || commandID(t, got[size-1]) != "99" {
		t.Fatalf("window = %d (%d) replies from %q to %q, want 68..99", n, len(got), commandID(t, got[0]), commandID(t, got[len(got)-1]))
	}
	checkFind := func(l *recent) {
		t.Helper()
		if b, ok := l.find("68", size); !ok {
			t.Error("the oldest reply of the window is not found")
		} else if rep, err := schemas.ReadReply(b); err != nil || rep.Version != 68 {
			t.Errorf("the reply found reads %+v, %v", rep, err)
		}
		if b, ok := l.find("99", size); !ok || commandID(t, b) != "99" {
			t.Error("the newest reply of the window is not found")
		}
		if _, ok := l.find("67", size); ok {
			t.Error("a reply older than the window is found")
		}
	}
	checkFind(l)

	// A window loaded from a snapshot is one node of all its replies; adds
	// go before it, and a cut keeps the newest of its replies.
	var whole []byte
	for _, b := range got {
		whole = append(whole, b...)
	}
	loaded := recentOf(size, whole)
	checkFind(loaded)
	if loaded.len() != size || loaded.older != nil {
		t.Errorf("recentOf(window) = %d replies, older %v", loaded.len(), loaded.older)
	}
	for i := 100; i < 100+size+10; i++ {
		loaded = loaded.add(body(i), size)
		if loaded.len() > 2*size {
			t.Fatalf("after %d adds the list holds %d replies, want at most %d", i-99, loaded.len(), 2*size)
		}
	}
	pieces, n = loaded.appendBodies(nil, size)
	got = splitBodies(t, pieces)
	if n != size || len(got) != size || commandID(t, got[0]) != "110" || commandID(t, got[size-1]) != "141" {
		t.Fatalf("window after adds = %d (%d) replies from %q to %q, want 110..141", n, len(got), commandID(t, got[0]), commandID(t, got[len(got)-1]))
	}
	if _, ok := loaded.find("109", size); ok {
		t.Error("a reply cut from a loaded window is found")
	}
	if _, ok := loaded.find("110", size); !ok {
		t.Error("the oldest reply of a window grown from a loaded one is not found")
	}
	if l.add(body(0), 0) != nil {
		t.Error("a window of size 0 keeps a reply")
	}
}

// splitBodies splits a window's bodies, in pieces, into its replies.
func splitBodies(t *testing.T, pieces [][]byte) [][]byte {
	t.Helper()
	var out [][]byte
	for _, p := range pieces {
		for len(p) > 0 {
			b, rest, ok := schemas.NextReply(p)
			if !ok {
				t.Fatalf("a malformed reply in the window: % x", p)
			}
			out = append(out, b)
			p = rest
		}
	}
	return out
}

// BenchmarkDedupeWindow is what every command does with its aggregate's
// window, full (32 replies) and loaded from a snapshot: look for its id
// (not there), add its reply, and write the window into the new snapshot.
func BenchmarkDedupeWindow(b *testing.B) {
	const size = 32
	r := schemas.NewRegistry()
	var whole []byte
	for i := range size {
		_, v, err := r.Encode(schemas.Reply{CommandID: fmt.Sprintf("cmd-%08d", i), Status: schemas.Accepted, Version: int64(i)})
		if err != nil {
			b.Fatal(err)
		}
		whole = append(whole, v[schemas.FramingSize:]...)
	}
	_, v, _ := r.Encode(schemas.Reply{CommandID: "cmd-new", Status: schemas.Accepted, Version: size})
	body := v[schemas.FramingSize:]
	var pieces [][]byte
	for b.Loop() {
		l := recentOf(size, whole)
		if _, ok := l.find("cmd-new", size); ok {
			b.Fatal("found")
		}
		pieces, _ = l.add(body, size).appendBodies(pieces[:0], size)
	}
}

// commandID returns the command id of a reply's body.
func commandID(t testing.TB, body []byte) string {
	t.Helper()
	rep, err := schemas.ReadReply(body)
	if err != nil {
		t.Fatal(err)
	}
	return rep.CommandID
}
