package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// benchResult is everything one run of `decider bench` measured.
type benchResult struct {
	Machine    machine
	Broker     string // what the run measured on
	Partitions int32
	Commands   int
	Accounts   int
	Duration   string // each system was offered each load, over all rounds
	Rounds     int    // in which the systems took turns at the latency runs
	Reference  systemResult
	Decider    systemResult
	// By load: the 5th and 95th percentiles of the p99 ratio over
	// bootstrap draws of each system's seconds (see ratioInterval).
	P99RatioInterval [][2]float64
	Restore          restoreResult
	BrokerPeakRSS    int64 // of a broker child process; 0 for others
}

// machine says where a run ran.
type machine struct {
	Cores      int    `json:"cores"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	CPU        string `json:"cpu"`
	GoVersion  string `json:"go_version"`
	OS         string `json:"os"`
	// MemoryMonitor names the kernel's DAMON monitors that are on ("" for
	// none; see memoryMonitor).
	MemoryMonitor string `json:"memory_monitor,omitempty"`
}

func thisMachine() machine {
	m := machine{Cores: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0), GoVersion: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH,
		MemoryMonitor: memoryMonitor(os.DirFS("/sys/kernel/mm/damon/admin"))}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		defer f.Close()
		for sc := bufio.NewScanner(f); sc.Scan(); {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}

// memoryMonitor describes the kernel's DAMON monitors that are on, from
// root, the admin directory of DAMON's sysfs interface: "kernel DAMON on
// (paddr sampled every 500ms)", or "" where none is on. A kdamond thread
// that samples the machine's memory runs on a core at each sample for tens
// of milliseconds: a periodic stall of whatever is busy then, which lands
// in both systems' latency tails, deepest in the one that needs more CPU
// (PERFORMANCE.md, the twenty-fourth round).
func memoryMonitor(root fs.FS) string {
	states, _ := fs.Glob(root, "kdamonds/*/state")
	var on []string
	for _, state := range states {
		if b, err := fs.ReadFile(root, state); err != nil || strings.TrimSpace(string(b)) != "on" {
			continue
		}
		contexts, _ := fs.Glob(root, path.Join(path.Dir(state), "contexts", "*"))
		for _, c := range contexts {
			ops, err := fs.ReadFile(root, path.Join(c, "operations"))
			if err != nil { // nr_contexts, not a context
				continue
			}
			us, _ := fs.ReadFile(root, path.Join(c, "monitoring_attrs", "intervals", "sample_us"))
			desc := strings.TrimSpace(string(ops))
			if n, err := strconv.ParseInt(strings.TrimSpace(string(us)), 10, 64); err == nil {
				desc += " sampled every " + (time.Duration(n) * time.Microsecond).String()
			}
			on = append(on, desc)
		}
	}
	if len(on) == 0 {
		return ""
	}
	return "kernel DAMON on (" + strings.Join(on, ", ") + ")"
}

// loadLabel names a load in JSON keys: 1000 → "1k", 1500 → "1500".
func loadLabel(perS int) string {
	if perS%1000 == 0 {
		return strconv.Itoa(perS/1000) + "k"
	}
	return strconv.Itoa(perS)
}

// roundRatios returns d[i] ÷ ref[i] for each round both have.
func roundRatios(d, ref []float64) []float64 {
	out := make([]float64, 0, min(len(d), len(ref)))
	for i := range min(len(d), len(ref)) {
		out = append(out, ratio(d[i], ref[i]))
	}
	return out
}

// median returns the median of xs, which it leaves as they are (0 for
// none).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// summary is the run as one JSON object: the headline figures and ratios
// (decider ÷ reference) at the top level, the details below.
func (r *benchResult) summary() map[string]any {
	d, ref := r.Decider, r.Reference
	m := map[string]any{
		"throughput_ratio":                   ratio(d.PerS, ref.PerS),
		"cpu_ratio":                          ratio(d.CPUus, ref.CPUus),
		"commands_per_s":                     d.PerS,
		"reference_per_s":                    ref.PerS,
		"startup_s":                          d.StartupS,
		"reference_startup_s":                ref.StartupS,
		"peak_rss_bytes":                     d.PeakRSS,
		"reference_peak_rss_bytes":           ref.PeakRSS,
		"rss_ratio":                          ratio(float64(d.PeakRSS), float64(ref.PeakRSS)),
		"pebble_bytes":                       d.DiskBytes,
		"restore_per_s":                      r.Restore.PerS,
		"restore_s":                          r.Restore.S,
		"restore_aggregates":                 r.Restore.Aggregates,
		"restore_peak_rss_bytes":             r.Restore.PeakRSS,
		"restore_pebble_bytes":               r.Restore.DiskBytes,
		"restore_cpu_us_per_snapshot":        r.Restore.CPUus,
		"restore_broker_cpu_us_per_snapshot": r.Restore.BrokerCPUus,
		"decider":                            d,
		"reference":                          ref,
		"machine":                            r.Machine,
		"config": map[string]any{
			"broker": r.Broker, "partitions": r.Partitions, "commands": r.Commands, "accounts": r.Accounts,
			"latency_per_load": r.Duration, "latency_rounds": r.Rounds,
		},
	}
	if r.BrokerPeakRSS > 0 {
		m["broker_peak_rss_bytes"] = r.BrokerPeakRSS
	}
	for i, l := range d.Latency {
		rl, label := ref.Latency[i], loadLabel(l.Offered)
		m["p50_ratio_"+label] = ratio(l.P50ms, rl.P50ms)
		m["p99_ratio_"+label] = ratio(l.P99ms, rl.P99ms)
		m["p99_ratio_interval_"+label] = r.P99RatioInterval[i]
		m["p999_ratio_"+label] = ratio(l.P999ms, rl.P999ms)
		m["cpu_ratio_"+label] = ratio(l.CPUus, rl.CPUus)
		rounds := roundRatios(l.RoundP99ms, rl.RoundP99ms)
		m["p99_ratio_rounds_"+label] = rounds
		if len(rounds) > 0 {
			m["p99_ratio_round_median_"+label] = median(rounds)
		}
	}
	return m
}

// table prints the run as a table: each figure of decider, of the
// reference, and their ratio.
func (r *benchResult) table(w io.Writer) {
	m := r.Machine
	fmt.Fprintf(w, "decider bench: %d cores (%s), GOMAXPROCS %d, %s, %s; broker: %s", m.Cores, m.CPU, m.GOMAXPROCS, m.GoVersion, m.OS, r.Broker)
	if m.MemoryMonitor != "" {
		fmt.Fprintf(w, "; %s", m.MemoryMonitor)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "%d partitions; %d commands over %d accounts; latency: %s of each load per system, in %d rounds taking turns\n\n", r.Partitions, r.Commands, r.Accounts, r.Duration, r.Rounds)
	row := func(name string, d, ref float64, format string) {
		fmt.Fprintf(w, "%-32s %12s %12s %18.2f\n", name, fmt.Sprintf(format, d), fmt.Sprintf(format, ref), ratio(d, ref))
	}
	fmt.Fprintf(w, "%-32s %12s %12s %18s\n", "", "decider", "reference", "decider/reference")
	d, ref := r.Decider, r.Reference
	row("flat out, commands/s", d.PerS, ref.PerS, "%.0f")
	row("CPU per command, µs", d.CPUus, ref.CPUus, "%.1f")
	if d.BrokerCPUus > 0 {
		row("broker CPU per command, µs", d.BrokerCPUus, ref.BrokerCPUus, "%.1f")
	}
	row("startup (join), s", d.StartupS, ref.StartupS, "%.2f")
	for i, l := range d.Latency {
		rl := ref.Latency[i]
		row(fmt.Sprintf("p50 at %d/s, ms", l.Offered), l.P50ms, rl.P50ms, "%.2f")
		row(fmt.Sprintf("p99 at %d/s, ms", l.Offered), l.P99ms, rl.P99ms, "%.2f")
		row(fmt.Sprintf("p999 at %d/s, ms", l.Offered), l.P999ms, rl.P999ms, "%.2f")
		row(fmt.Sprintf("sent at %d/s, per s", l.Offered), l.Achieved, rl.Achieved, "%.0f")
		row(fmt.Sprintf("unanswered at %d/s", l.Offered), float64(l.Sent-l.Replies), float64(rl.Sent-rl.Replies), "%.0f")
		row(fmt.Sprintf("CPU per command at %d/s, µs", l.Offered), l.CPUus, rl.CPUus, "%.1f")
		if l.CallerCPUus > 0 {
			row(fmt.Sprintf("callers' CPU at %d/s, µs", l.Offered), l.CallerCPUus, rl.CallerCPUus, "%.1f")
		}
		if l.BrokerCPUus > 0 {
			row(fmt.Sprintf("broker CPU at %d/s, µs", l.Offered), l.BrokerCPUus, rl.BrokerCPUus, "%.1f")
		}
	}
	row("peak RSS, MiB", mib(d.PeakRSS), mib(ref.PeakRSS), "%.0f")
	fmt.Fprintf(w, "\np99 ratio with its 90%% interval (block bootstrap: each system's seconds drawn again %d times):\n", bootstrapDraws)
	for i, l := range d.Latency {
		in := r.P99RatioInterval[i]
		fmt.Fprintf(w, "  at %d/s: %.2f (%.2f–%.2f)\n", l.Offered, ratio(l.P99ms, ref.Latency[i].P99ms), in[0], in[1])
	}
	fmt.Fprintf(w, "\np99 ratio round by round (each round's runs alone):\n")
	for i, l := range d.Latency {
		rounds := roundRatios(l.RoundP99ms, ref.Latency[i].RoundP99ms)
		if len(rounds) == 0 {
			continue
		}
		fmt.Fprintf(w, "  at %d/s:", l.Offered)
		for _, x := range rounds {
			fmt.Fprintf(w, " %.2f", x)
		}
		fmt.Fprintf(w, " (median %.2f)\n", median(rounds))
	}
	fmt.Fprintf(w, "\nstate store after the run: %.1f MiB on disk\n", mib(d.DiskBytes))
	rs := r.Restore
	fmt.Fprintf(w, "restore of %d snapshots: %.2f s, %.0f snapshots/s, peak RSS %.0f MiB, %.1f MiB on disk; CPU per snapshot %.2f µs (broker %.2f µs)\n", rs.Aggregates, rs.S, rs.PerS, mib(rs.PeakRSS), mib(rs.DiskBytes), rs.CPUus, rs.BrokerCPUus)
	if r.BrokerPeakRSS > 0 {
		fmt.Fprintf(w, "broker process peak RSS: %.0f MiB\n", mib(r.BrokerPeakRSS))
	}
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// resetPeakRSS returns freed memory to the OS and resets this process's
// peak RSS to its current RSS (Linux: /proc/self/clear_refs), so that the
// next peakRSS covers what runs from now on. Where it cannot, the peak
// covers the process's whole life.
func resetPeakRSS() {
	debug.FreeOSMemory()
	_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
}

// peakRSS returns the peak resident set of process pid in bytes: VmHWM
// from /proc, else, for this process, getrusage's maximum.
func peakRSS(pid int) int64 {
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for line := range bytes.Lines(b) {
			if v, ok := bytes.CutPrefix(line, []byte("VmHWM:")); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(string(v)), " kB"), 10, 64)
				return kb << 10
			}
		}
	}
	var ru syscall.Rusage
	if pid != os.Getpid() || syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return ru.Maxrss << 10 // kilobytes on Linux
}

// cpuTime returns the CPU time (user and system) process pid has used:
// this process's for pid 0, from getrusage; another's from /proc (Linux),
// else 0.
func cpuTime(pid int) time.Duration {
	if pid == 0 {
		var ru syscall.Rusage
		if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
			return 0
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command name, which is in parentheses: utime
	// and stime are the 12th and 13th, in clock ticks (100 per second).
	_, rest, _ := bytes.Cut(b, []byte(") "))
	f := strings.Fields(string(rest))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * (time.Second / 100)
}

// dirSize returns the bytes of the files under dir.
func dirSize(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		n += info.Size()
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("size of %s: %w", dir, err)
	}
	return n, nil
}

// freeLocalAddr returns an address on 127.0.0.1 with a port that was free
// a moment ago.
func freeLocalAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
