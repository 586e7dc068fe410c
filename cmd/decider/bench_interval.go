package main

import (
	"math"
	"math/rand/v2"
	"slices"
	"time"
)

// How sure a run's p99 ratio is.
//
// A latency run's p99 is made by a few stalls of the shared machine: in
// runs of 10 s per load and system, a system's slowest 1% at 10k
// commands/s came in 7–11 episodes of 20–40 ms, the largest three holding
// most of it, and both systems had them alike. Whether a run's ratio is
// 0.7 or 1.6 is then mostly which system a few of them fell on. The bench
// says how much a run's ratio is worth with a block bootstrap: each
// system's latencies are cut into the second of the run each command was
// sent in (a stall's commands stay together), the seconds are drawn again
// with replacement many times, and the spread of the ratio of the drawn
// p99s is the interval.

// blockLen is the length of a block of the bootstrap.
const blockLen = time.Second

// Latencies are counted in buckets 1% wide: bucket i holds [1.01^i,
// 1.01^(i+1)) µs, up to 1.01^2047 µs ≈ 2.3 days.
const (
	histBuckets = 2048
	histGrowth  = 1.01
)

// histogram counts latencies by bucket.
type histogram struct {
	n      int
	counts [histBuckets]uint32
}

func bucketOf(d time.Duration) int {
	us := float64(d) / float64(time.Microsecond)
	if us < 1 {
		return 0
	}
	return min(int(math.Log(us)/math.Log(histGrowth)), histBuckets-1)
}

// bucketValue is the middle of bucket i.
func bucketValue(i int) time.Duration {
	return time.Duration(math.Pow(histGrowth, float64(i)+0.5) * float64(time.Microsecond))
}

func (h *histogram) add(d time.Duration) {
	h.counts[bucketOf(d)]++
	h.n++
}

// addAll adds o's counts to h.
func (h *histogram) addAll(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
}

// quantile returns the q-quantile of what h counted, to its bucket (the
// same rank quantile takes of a sorted slice); 0 for nothing.
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank, seen := int(q*float64(h.n-1)), 0
	for i, c := range h.counts {
		if seen += int(c); seen > rank {
			return bucketValue(i)
		}
	}
	return bucketValue(histBuckets - 1)
}

// blocksOf counts lats in one histogram per blockLen of the run, by the
// offset from the run's start at which each command was sent (sent[i] is
// lats[i]'s).
func blocksOf(lats, sent []time.Duration) []*histogram {
	var blocks []*histogram
	for i, lat := range lats {
		b := int(max(sent[i], 0) / blockLen)
		for len(blocks) <= b {
			blocks = append(blocks, &histogram{})
		}
		blocks[b].add(lat)
	}
	return slices.DeleteFunc(blocks, func(h *histogram) bool { return h.n == 0 })
}

// bootstrapDraws is how many times ratioInterval draws the blocks again.
const bootstrapDraws = 1000

// ratioInterval returns the 5th and 95th percentiles, over bootstrap
// draws, of the ratio of the q-quantiles of blocks d and ref, each
// system's blocks drawn again as many as it has, with replacement. The
// draws are the same for the same blocks (a fixed seed).
func ratioInterval(d, ref []*histogram, q float64) (lo, hi float64) {
	if len(d) == 0 || len(ref) == 0 {
		return 0, 0
	}
	rng := rand.New(rand.NewPCG(1, 2))
	draw := func(blocks []*histogram) time.Duration {
		var h histogram
		for range blocks {
			h.addAll(blocks[rng.IntN(len(blocks))])
		}
		return h.quantile(q)
	}
	ratios := make([]float64, bootstrapDraws)
	for i := range ratios {
		ratios[i] = ratio(float64(draw(d)), float64(draw(ref)))
	}
	slices.Sort(ratios)
	return ratios[bootstrapDraws*5/100], ratios[bootstrapDraws*95/100]
}
