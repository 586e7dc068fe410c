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
	var l *recent
	for i := range 100 {
		l = l.add(schemas.Reply{CommandID: fmt.Sprint(i)}, []byte(fmt.Sprint(i)), size)
		if l.len() > 2*size {
			t.Fatalf("after %d adds the list holds %d nodes, want at most %d", i+1, l.len(), 2*size)
		}
	}
	got := l.appendBodies(nil, size)
	if len(got) != size || string(got[0]) != "68" || string(got[size-1]) != "99" {
		t.Fatalf("window = %d replies from %s to %s, want 68..99", len(got), got[0], got[len(got)-1])
	}
	if _, ok := l.find("68", size); !ok {
		t.Error("the oldest reply of the window is not found")
	}
	if _, ok := l.find("67", size); ok {
		t.Error("a reply older than the window is found")
	}
	replies := make([]schemas.Reply, len(got))
	for i, b := range got {
		replies[i].CommandID = string(b)
	}
	if again := recentOf(replies, got); again.len() != size || again.reply.CommandID != "99" || string(again.body) != "99" {
		t.Errorf("recentOf(window) = %d nodes, newest %v", again.len(), again.reply)
	}
	var want int64
	for n := l; n != nil; n = n.older {
		want += nodeOverhead + int64(len(n.body)+len(n.reply.CommandID))
	}
	if l.cost() != want {
		t.Errorf("cost = %d, want %d: the sum over the list's %d nodes", l.cost(), want, l.len())
	}
	if l.add(schemas.Reply{CommandID: "x"}, nil, 0) != nil {
		t.Error("a window of size 0 keeps a reply")
	}
}
