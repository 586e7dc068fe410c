package processor

import (
	"fmt"
	"testing"

	"github.com/deciderhq/decider/schemas"
)

// The dedupe window keeps exactly the newest size replies, in order, and
// holds at most twice that many nodes.
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
	got := l.appendBodies(nil, size)
	if len(got) != size || string(schemas.ReplyCommandID(got[0])) != "68" || string(schemas.ReplyCommandID(got[size-1])) != "99" {
		t.Fatalf("window = %d replies from %q to %q, want 68..99", len(got), schemas.ReplyCommandID(got[0]), schemas.ReplyCommandID(got[len(got)-1]))
	}
	if b, ok := l.find("68", size); !ok {
		t.Error("the oldest reply of the window is not found")
	} else if rep, err := schemas.ReadReply(b); err != nil || rep.Version != 68 {
		t.Errorf("the reply found reads %+v, %v", rep, err)
	}
	if _, ok := l.find("67", size); ok {
		t.Error("a reply older than the window is found")
	}
	if again := recentOf(got); again.len() != size || string(again.body) != string(got[size-1]) || again.older.older.len() != size-2 {
		t.Errorf("recentOf(window) = %d nodes", again.len())
	}
	if l.add(body(0), 0) != nil {
		t.Error("a window of size 0 keeps a reply")
	}
}
