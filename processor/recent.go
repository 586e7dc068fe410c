package processor

import "github.com/deciderhq/decider/schemas"

// recent is an aggregate's dedupe window: its latest replies, newest first,
// as an immutable list that states share. Adding a reply makes one node
// instead of copying the window; a list grown to twice the window's size
// is cut back to it, so each add costs O(1) amortised and the memory held
// is bounded.
//
// Replies are kept as Avro bodies with an empty aggregate id (the
// snapshot's own), cut from the reply sent (schemas.AppendWindowReply): snapshots
// are written from the bodies, a command id is compared within its body,
// and a reply is decoded only when a duplicate is found. The oldest node of
// a window read from a snapshot holds all of that snapshot's replies, as
// the bytes it read them from (oldest first, one after another): a window
// loaded is one node and no copy, and written again as one append.
type recent struct {
	bodies []byte // the bodies of count replies, oldest first
	count  int
	older  *recent
	n      int // replies in this list, this node's included
}

// recentOf makes the window of a snapshot's n replies, encoded as bodies.
func recentOf(n int, bodies []byte) *recent {
	if n == 0 {
		return nil
	}
	return &recent{bodies: bodies, count: n, n: n}
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
	return &recent{bodies: body, count: 1, older: l, n: l.len() + 1}
}

func (l *recent) len() int {
	if l == nil {
		return 0
	}
	return l.n
}

// newest returns the bodies of l's node's newest k replies, k <= count.
func (l *recent) newest(k int) []byte {
	return schemas.SkipReplies(l.bodies, l.count-k) // well formed: ReadSnapshot checked them, or they were encoded here
}

// cut returns a fresh list of the newest n replies of l.
func (l *recent) cut(n int) *recent {
	if n <= 0 || l == nil {
		return nil
	}
	if l.count >= n {
		return &recent{bodies: l.newest(n), count: n, n: n}
	}
	older := l.older.cut(n - l.count)
	return &recent{bodies: l.bodies, count: l.count, older: older, n: older.len() + l.count}
}

// find returns the body of the reply to commandID among the newest size.
func (l *recent) find(commandID string, size int) ([]byte, bool) {
	for ; l != nil && size > 0; l, size = l.older, size-l.count {
		if body, ok := schemas.FindReply(l.newest(min(size, l.count)), commandID); ok {
			return body, true
		}
	}
	return nil, false
}

// appendBodies appends the bodies of the newest size replies to out,
// oldest first, as AppendSnapshot takes them, and returns how many replies
// they hold.
func (l *recent) appendBodies(out [][]byte, size int) ([][]byte, int) {
	if l == nil || size <= 0 {
		return out, 0
	}
	if l.count >= size {
		return append(out, l.newest(size)), size
	}
	out, n := l.older.appendBodies(out, size-l.count)
	return append(out, l.bodies), n + l.count
}
