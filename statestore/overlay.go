package statestore

// Overlay holds the snapshots one open transaction wrote for one partition,
// until the transaction commits (Store.Apply) or aborts (Reset). Reads of
// that partition look in the overlay first, so a command sees the state the
// previous command left even inside one batch, while the Store itself only
// ever receives committed state.
//
// An Overlay is owned by one goroutine at a time.
type Overlay struct {
	typ       string
	partition int32
	entries   map[string]Entry
}

// Entry is one aggregate's snapshot in an overlay: the changelog record
// value as written to Kafka, and the decoded form its writer keeps so that
// the next command needs no decode. Decoded is opaque to the store.
type Entry struct {
	Value   []byte
	Decoded any
}

// NewOverlay returns an empty overlay of partition p of type typ, with
// room for about n aggregates.
func NewOverlay(typ string, p int32, n int) *Overlay {
	return &Overlay{typ: typ, partition: p, entries: make(map[string]Entry, n)}
}

// Get returns the entry of aggregate id, if the open transaction wrote one.
func (o *Overlay) Get(id string) (Entry, bool) {
	e, ok := o.entries[id]
	return e, ok
}

// Put records the latest snapshot of aggregate id; a later Put of the same
// id replaces it, so a batch writes each aggregate once to the store.
func (o *Overlay) Put(id string, e Entry) { o.entries[id] = e }

// Len returns the number of aggregates written.
func (o *Overlay) Len() int { return len(o.entries) }

// Each calls fn for every entry, in no particular order.
func (o *Overlay) Each(fn func(id string, e Entry)) {
	for id, e := range o.entries {
		fn(id, e)
	}
}

// Reset drops every entry: the transaction aborted.
func (o *Overlay) Reset() { clear(o.entries) }
