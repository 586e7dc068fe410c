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
	index     map[string]int32 // id → its place in ids and entries
	ids       []string         // in the order first put
	entries   []Entry
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
	return &Overlay{typ: typ, partition: p, index: make(map[string]int32, n), ids: make([]string, 0, n), entries: make([]Entry, 0, n)}
}

// Get returns the entry of aggregate id, if the open transaction wrote one.
func (o *Overlay) Get(id string) (Entry, bool) {
	i, ok := o.index[id]
	if !ok {
		return Entry{}, false
	}
	return o.entries[i], true
}

// Put records the latest snapshot of aggregate id; a later Put of the same
// id replaces it, so a batch writes each aggregate once to the store.
func (o *Overlay) Put(id string, e Entry) {
	if i, ok := o.index[id]; ok {
		o.entries[i] = e
		return
	}
	o.index[id] = int32(len(o.entries))
	o.ids = append(o.ids, id)
	o.entries = append(o.entries, e)
}

// Len returns the number of aggregates written.
func (o *Overlay) Len() int { return len(o.entries) }

// Each calls fn for every entry, in the order their aggregates were first
// put. fn may Put the entry it is given again.
func (o *Overlay) Each(fn func(id string, e Entry)) {
	for i, id := range o.ids {
		fn(id, o.entries[i])
	}
}

// Reset drops every entry: the transaction aborted.
func (o *Overlay) Reset() {
	clear(o.index)
	clear(o.entries) // what they point to belongs to the transaction
	o.ids, o.entries = o.ids[:0], o.entries[:0]
}
