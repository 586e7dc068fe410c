package main

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
)

// bench --quick --json runs every phase against a broker in the test
// process and reports every headline figure. Only that the figures are
// there is checked: a timing is never asserted.
func TestBenchQuick(t *testing.T) {
	var out bytes.Buffer
	if err := dispatch(context.Background(), []string{"bench", "--quick", "--json", "--broker", "embedded"}, &out); err != nil {
		t.Fatalf("bench: %v", err)
	}
	var got map[string]any
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("bench printed %q: %v", out.String(), err)
	}
	for _, key := range []string{"throughput_ratio", "p99_ratio_1k", "p99_ratio_10k", "p99_ratio_round_median_10k", "cpu_ratio_10k", "commands_per_s", "reference_per_s", "restore_per_s", "peak_rss_bytes", "pebble_bytes"} {
		if v, ok := got[key].(float64); !ok || !(v > 0) {
			t.Errorf("%s = %v, want a positive number", key, got[key])
		}
	}
	if in, ok := got["p99_ratio_interval_10k"].([]any); !ok || len(in) != 2 || !(in[0].(float64) > 0) || in[0].(float64) > in[1].(float64) {
		t.Errorf("p99_ratio_interval_10k = %v, want [lo, hi] with 0 < lo <= hi", got["p99_ratio_interval_10k"])
	}
}
