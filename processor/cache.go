package processor

import "sync"

// stateCache holds decoded aggregates as the last committed transaction
// left them, so that the next command on a hot aggregate needs neither a
// Pebble read nor a decode (Kafka Streams keeps a record cache in front of
// its stores for the same reason). It is bounded by an estimate of the bytes
// it holds (Config.StateCacheBytes) and evicts the least recently used.
//
// Entries are keyed by assignment: a partition assigned again (and
// restored, which may rewrite its store) starts with no entries, and the old
// assignment's entries are never read again and age out.
type stateCache struct {
	mu         sync.Mutex
	max, bytes int64
	m          map[cacheKey]*cacheEntry
	head, tail *cacheEntry // most and least recently used
}

type cacheKey struct {
	a  *assigned
	id string
}

type cacheEntry struct {
	key        cacheKey
	st         *aggState
	cost       int64
	prev, next *cacheEntry
}

// entryOverhead is what an entry costs beyond its snapshot's encoded size
// and its dedupe window: the map slot, the entry, the decoded state's
// headers.
const entryOverhead = 256

func newStateCache(maxBytes int64) *stateCache {
	return &stateCache{max: maxBytes, m: map[cacheKey]*cacheEntry{}}
}

// get returns the cached aggregate, if any, and marks it recently used.
func (c *stateCache) get(a *assigned, id string) (*aggState, bool) {
	if c.max <= 0 {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[cacheKey{a, id}]
	if !ok {
		return nil, false
	}
	c.unlink(e)
	c.pushFront(e)
	return e.st, true
}

// put caches a committed aggregate whose snapshot encodes to size bytes.
// One too big to cache replaces nothing: its older entry is dropped.
func (c *stateCache) put(a *assigned, id string, st *aggState, size int) {
	if c.max <= 0 {
		return
	}
	cost := int64(size+len(id)) + entryOverhead + st.recent.cost()
	c.mu.Lock()
	defer c.mu.Unlock()
	k := cacheKey{a, id}
	if cost > c.max {
		c.removeLocked(k)
		return
	}
	if e, ok := c.m[k]; ok {
		c.unlink(e)
		c.bytes -= e.cost
		e.st, e.cost = st, cost
		c.pushFront(e)
		c.bytes += cost
	} else {
		e := &cacheEntry{key: k, st: st, cost: cost}
		c.m[k] = e
		c.pushFront(e)
		c.bytes += cost
	}
	for c.bytes > c.max {
		old := c.tail
		c.unlink(old)
		delete(c.m, old.key)
		c.bytes -= old.cost
	}
}

// remove drops the entry of an aggregate, if any.
func (c *stateCache) remove(a *assigned, id string) {
	if c.max <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.removeLocked(cacheKey{a, id})
}

func (c *stateCache) removeLocked(k cacheKey) {
	if e, ok := c.m[k]; ok {
		c.unlink(e)
		delete(c.m, k)
		c.bytes -= e.cost
	}
}

// size returns the estimated bytes held.
func (c *stateCache) size() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
}

func (c *stateCache) pushFront(e *cacheEntry) {
	e.prev, e.next = nil, c.head
	if c.head != nil {
		c.head.prev = e
	}
	c.head = e
	if c.tail == nil {
		c.tail = e
	}
}

func (c *stateCache) unlink(e *cacheEntry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		c.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		c.tail = e.prev
	}
	e.prev, e.next = nil, nil
}
