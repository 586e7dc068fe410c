package processor

import "github.com/deciderhq/decider/schemas"

// recent is an aggregate's dedupe window: its latest replies, newest first,
// as an immutable list that states share. Adding a reply makes one node
// instead of copying the window; a list grown to twice the window's size
// is cut back to it, so each add costs O(1) amortised and the memory held
// is bounded.
type recent struct {
	reply schemas.Reply
	body  []byte // reply's Avro body as encoded for the reply record, reused in every snapshot
	older *recent
	n     int   // nodes in this list, this one included
	bytes int64 // cost of this list, this node included
}

// newRecent returns the list of r, encoded as body, in front of older.
func newRecent(r schemas.Reply, body []byte, older *recent) *recent {
	return &recent{
		reply: r, body: body, older: older, n: older.len() + 1,
		bytes: nodeOverhead + int64(len(body)+len(r.CommandID)+len(r.AggregateID)+len(r.Reason)) + older.cost(),
	}
}

// add returns the window with r, encoded as body, added, keeping at least
// the newest size replies; size <= 0 keeps none.
func (l *recent) add(r schemas.Reply, body []byte, size int) *recent {
	if size <= 0 {
		return nil
	}
	if l.len() >= 2*size {
		l = l.cut(size - 1)
	}
	return newRecent(r, body, l)
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
	return newRecent(l.reply, l.body, l.older.cut(n-1))
}

// find returns the reply to commandID among the newest size.
func (l *recent) find(commandID string, size int) (schemas.Reply, bool) {
	for ; l != nil && size > 0; l, size = l.older, size-1 {
		if l.reply.CommandID == commandID {
			return l.reply, true
		}
	}
	return schemas.Reply{}, false
}

// appendBodies appends the encoded newest size replies to out, oldest
// first: the order of decider.Snapshot's recent.
func (l *recent) appendBodies(out [][]byte, size int) [][]byte {
	if l == nil || size <= 0 {
		return out
	}
	return append(l.older.appendBodies(out, size-1), l.body)
}

// recentOf makes the window of a decoded snapshot's replies and their
// bodies, oldest first.
func recentOf(replies []schemas.Reply, bodies [][]byte) *recent {
	var l *recent
	for i, r := range replies {
		l = newRecent(r, bodies[i], l)
	}
	return l
}

// nodeOverhead estimates what a node holds beyond its bytes and strings.
const nodeOverhead = 160

// cost estimates the memory the list holds, for the state cache's bound.
func (l *recent) cost() int64 {
	if l == nil {
		return 0
	}
	return l.bytes
}
