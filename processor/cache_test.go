package processor

import "testing"

// The cache never answers with a state older than the last one put: a
// state too big to cache drops the entry it replaces, and eviction keeps
// the bound.
func TestStateCache(t *testing.T) {
	a := &assigned{}
	c := newStateCache(4096)
	c.put(a, "x", &aggState{version: 1}, 1000)
	if st, ok := c.get(a, "x"); !ok || st.version != 1 {
		t.Fatalf("get after put = %v, %v", st, ok)
	}
	c.put(a, "x", &aggState{version: 2}, 5000)
	if st, ok := c.get(a, "x"); ok {
		t.Fatalf("an uncacheable newer state left version %d cached", st.version)
	}
	for i := range 10 {
		c.put(a, string(rune('a'+i)), &aggState{version: int64(i)}, 1000)
	}
	if c.size() > 4096 {
		t.Errorf("cache holds %d bytes, bound 4096", c.size())
	}
	if _, ok := c.get(a, "a"); ok {
		t.Error("the least recently used entry was not evicted")
	}
	if _, ok := c.get(&assigned{}, "j"); ok {
		t.Error("an entry of another assignment was served")
	}
	c.remove(a, "j")
	if _, ok := c.get(a, "j"); ok {
		t.Error("a removed entry was served")
	}
}
