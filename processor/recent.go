package processor

import "github.com/deciderhq/decider/schemas"

// recent is an aggregate's dedupe window: its latest replies, newest first,
// as an immutable list that states share. Adding a reply makes one node
// instead of copying the window; a list grown to twice the window's size
// is cut back to it, so each add costs O(1) amortised and the memory held
// is bounded. A node keeps its reply only as the Avro body it was encoded
// to once: snapshots are written from the bodies, a command id is compared
// within its body, and the reply is decoded only when a duplicate is found.
type recent struct {
	body  []byte // a reply's Avro body as encoded for the reply record
	older *recent
	n     int // nodes in this list, this one included
}

// add returns the window with the reply encoded as body added, keeping at
// least the newest size replies; size <= 0 keeps none.
func (l *recent) add(body []byte, size int) *recent {
	if size <= 0 {
		return nil
	}
	if l.len() >= 2*size {
		l = l.cut(size - 1)
	}
	return &recent{body: body, older: l, n: l.len() + 1}
}

func (l *recent) len() int {
	if l == nil {
		return 0
	}
	return l.n
}

// cut returns a fresh list of the newest n replies of l.
func (l *recent) cut(n int) *recent {
	if n <= 0 || l == nil {
		return nil
	}
	older := l.older.cut(n - 1)
	return &recent{body: l.body, older: older, n: older.len() + 1}
}

// find returns the body of the reply to commandID among the newest size.
func (l *recent) find(commandID string, size int) ([]byte, bool) {
	for ; l != nil && size > 0; l, size = l.older, size-1 {
		if string(schemas.ReplyCommandID(l.body)) == commandID {
			return l.body, true
		}
	}
	return nil, false
}

// appendBodies appends the encoded newest size replies to out, oldest
// first: the order of decider.Snapshot's recent.
func (l *recent) appendBodies(out [][]byte, size int) [][]byte {
	if l == nil || size <= 0 {
		return out
	}
	return append(l.older.appendBodies(out, size-1), l.body)
}

// recentOf makes the window of a snapshot's reply bodies, oldest first, in
// one allocation.
func recentOf(bodies [][]byte) *recent {
	if len(bodies) == 0 {
		return nil
	}
	nodes := make([]recent, len(bodies))
	var l *recent
	for i, b := range bodies {
		nodes[i] = recent{body: b, older: l, n: i + 1}
		l = &nodes[i]
	}
	return l
}
