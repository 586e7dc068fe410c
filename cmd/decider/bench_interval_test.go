package main

import (
	"math/rand/v2"
	"slices"
	"testing"
	"testing/fstest"
	"time"
)

// A histogram's quantile is the sorted slice's, to within its bucket.
func TestHistogramQuantile(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var h histogram
	var lats []time.Duration
	for range 10000 {
		d := time.Duration(rng.ExpFloat64() * float64(2*time.Millisecond))
		h.add(d)
		lats = append(lats, d)
	}
	slices.Sort(lats)
	for _, q := range []float64{0.5, 0.99, 0.999} {
		want, got := quantile(lats, q), h.quantile(q)
		if r := ratio(float64(got), float64(want)); r < 0.99 || r > 1.01 {
			t.Errorf("q%v = %v, want %v within 1%%", q, got, want)
		}
	}
}

// The interval of two systems with the same latencies holds 1; one of a
// system twice as slow holds 2 and not 1; one made of few seconds, one
// of which stalled, is wide.
func TestRatioInterval(t *testing.T) {
	seconds := func(seed uint64, n int, scale float64, stall int) []*histogram {
		rng := rand.New(rand.NewPCG(seed, seed))
		var lats, sent []time.Duration
		for i := range n * 1000 {
			d := time.Duration(rng.ExpFloat64() * scale * float64(time.Millisecond))
			if i/1000 == stall {
				d += 30 * time.Millisecond
			}
			lats = append(lats, d)
			sent = append(sent, time.Duration(i)*time.Millisecond)
		}
		return blocksOf(lats, sent)
	}
	if b := seconds(1, 30, 1, -1); len(b) != 30 {
		t.Fatalf("%d blocks of 30 s, want 30", len(b))
	}
	if lo, hi := ratioInterval(seconds(1, 30, 1, -1), seconds(2, 30, 1, -1), 0.99); lo > 1 || hi < 1 || hi-lo > 0.3 {
		t.Errorf("same latencies: interval %.2f–%.2f, want one holding 1, narrower than 0.3", lo, hi)
	}
	if lo, hi := ratioInterval(seconds(1, 30, 2, -1), seconds(2, 30, 1, -1), 0.99); lo > 2 || hi < 2 || lo <= 1 {
		t.Errorf("twice as slow: interval %.2f–%.2f, want one holding 2 and above 1", lo, hi)
	}
	if lo, hi := ratioInterval(seconds(1, 5, 1, 2), seconds(2, 5, 1, -1), 0.99); hi/lo < 2 {
		t.Errorf("a stall in one of 5 seconds: interval %.2f–%.2f, want it wider than a factor 2", lo, hi)
	}
	if lo, hi := ratioInterval(nil, seconds(2, 5, 1, -1), 0.99); lo != 0 || hi != 0 {
		t.Errorf("no blocks: %v–%v, want 0–0", lo, hi)
	}
}

// memoryMonitor names the DAMON contexts of the kdamonds that are on, and
// nothing where none is on or DAMON is absent.
func TestMemoryMonitor(t *testing.T) {
	on := fstest.MapFS{
		"kdamonds/nr_kdamonds":                                       {Data: []byte("2\n")},
		"kdamonds/0/state":                                           {Data: []byte("on\n")},
		"kdamonds/0/contexts/nr_contexts":                            {Data: []byte("1\n")},
		"kdamonds/0/contexts/0/operations":                           {Data: []byte("paddr\n")},
		"kdamonds/0/contexts/0/monitoring_attrs/intervals/sample_us": {Data: []byte("500000\n")},
		"kdamonds/1/state":                                           {Data: []byte("off\n")},
		"kdamonds/1/contexts/0/operations":                           {Data: []byte("vaddr\n")},
		"kdamonds/1/contexts/0/monitoring_attrs/intervals/sample_us": {Data: []byte("5000\n")},
	}
	if got, want := memoryMonitor(on), "kernel DAMON on (paddr sampled every 500ms)"; got != want {
		t.Errorf("on: %q, want %q", got, want)
	}
	off := fstest.MapFS{"kdamonds/0/state": {Data: []byte("off\n")}}
	if got := memoryMonitor(off); got != "" {
		t.Errorf("off: %q, want none", got)
	}
	if got := memoryMonitor(fstest.MapFS{}); got != "" {
		t.Errorf("absent: %q, want none", got)
	}
}
