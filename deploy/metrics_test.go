package deploy_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/deciderhq/decider/examples/accounts"
	"github.com/deciderhq/decider/topology"
	"github.com/twmb/franz-go/pkg/kgo"
)

var (
	promString   = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'|`[^`]*`")
	promBrackets = regexp.MustCompile(`\{[^}]*\}|\[[^\]]*\]`)
	promGrouping = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promIdent    = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
	promKeywords = []string{"and", "or", "unless", "bool", "offset", "inf", "nan"}
)

// metricNames returns the metric names a PromQL expression selects: its
// identifiers, less strings, label matchers, ranges, grouping labels,
// functions, keywords and the units of durations.
func metricNames(expr string) []string {
	s := promString.ReplaceAllString(expr, `""`)
	s = promBrackets.ReplaceAllString(s, " ")
	s = promGrouping.ReplaceAllString(s, " ")
	var names []string
	for _, loc := range promIdent.FindAllStringIndex(s, -1) {
		id := s[loc[0]:loc[1]]
		if loc[0] > 0 && strings.ContainsRune("0123456789.$", rune(s[loc[0]-1])) {
			continue // 10m, 1e3, $var
		}
		if strings.HasPrefix(strings.TrimLeft(s[loc[1]:], " \t\n"), "(") || slices.Contains(promKeywords, strings.ToLower(id)) {
			continue
		}
		if !slices.Contains(names, id) {
			names = append(names, id)
		}
	}
	return names
}

func TestMetricNames(t *testing.T) {
	for _, c := range []struct {
		expr string
		want []string
	}{
		{`histogram_quantile(0.99, sum by (le, aggregate_type) (rate(decider_decide_duration_seconds_bucket{job=~"$job", instance=~"$instance"}[$__rate_interval])))`,
			[]string{"decider_decide_duration_seconds_bucket"}},
		{"decider_consumer_lag_records > 1000\n  and deriv(decider_consumer_lag_records[10m]) > 0", []string{"decider_consumer_lag_records"}},
		{`sum by (job) (a unless b offset 10m) and on (job, instance) (up offset 1h == 1) or c{reason!="x"} / ignoring(kind) d`,
			[]string{"a", "b", "up", "c", "d"}},
		{`decider_ready{job=~"$job"}`, []string{"decider_ready"}},
	} {
		if got := metricNames(c.expr); !slices.Equal(got, c.want) {
			t.Errorf("metricNames(%q) = %q, want %q", c.expr, got, c.want)
		}
	}
}

// declared are the metric names processor/metrics.go declares, histograms
// with their _bucket, _sum and _count series: the reference for metrics that
// a worker only exposes after an event this test does not cause.
func declared(t *testing.T) map[string]bool {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("..", "processor", "metrics.go"))
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	opts := regexp.MustCompile(`prometheus\.(\w+)Opts\{Namespace: ns, Name: "(\w+)"`)
	for _, m := range opts.FindAllStringSubmatch(string(src), -1) {
		name := "decider_" + m[2]
		names[name] = true
		if m[1] == "Histogram" {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[name+s] = true
			}
		}
	}
	for _, m := range regexp.MustCompile(`NewDesc\("(\w+)"`).FindAllStringSubmatch(string(src), -1) {
		names[m[1]] = true
	}
	if len(names) < 30 {
		t.Fatalf("found %d metric names in processor/metrics.go, want its 18 metrics and their histograms' series: did its declarations change form?", len(names))
	}
	return names
}

// worker is a `decider dev` subprocess: an embedded broker and a worker.
type worker struct {
	broker, http string
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startWorker runs `decider dev` until the test ends and waits until its
// /readyz answers 200.
func startWorker(t *testing.T) worker {
	t.Helper()
	w := worker{broker: freeAddr(t), http: freeAddr(t)}
	dir := t.TempDir()
	logs, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	cmd := exec.Command(decider, "dev", "--listen", w.broker, "--http", w.http, "--data-dir", filepath.Join(dir, "data"),
		"--partitions", "2", "--log-level", "warn")
	cmd.Stdout, cmd.Stderr = logs, logs
	logged := func() string { b, _ := os.ReadFile(logs.Name()); return string(b) }
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-exited:
			t.Fatalf("decider dev exited: %v\n%s", err, logged())
		default:
		}
		if code, _ := w.get(t, "/readyz"); code == http.StatusOK {
			return w
		}
		if time.Now().After(deadline) {
			t.Fatalf("decider dev not ready after 30s\n%s", logged())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// get asks the worker's HTTP API for path; code 0 if it did not answer.
func (w worker) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + w.http + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// post sends a command through the worker's HTTP API and checks it is
// accepted.
func (w worker) post(t *testing.T, body string) {
	t.Helper()
	resp, err := http.Post("http://"+w.http+"/v1/account/acc-1/commands", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s: %d %s", body, resp.StatusCode, b)
	}
}

// scrape returns the names of the samples the worker exposes on path.
func (w worker) scrape(t *testing.T, path string) map[string]bool {
	t.Helper()
	code, body := w.get(t, path)
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, code, body)
	}
	names := map[string]bool{}
	for _, line := range strings.Split(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		names[line[:strings.IndexAny(line, "{ ")]] = true
	}
	return names
}

// TestAgainstWorker starts a real worker, makes it answer commands (one
// twice, for a dedupe hit) and dead-letter a record without a key, and
// checks the deployment's paths and metric names against it.
func TestAgainstWorker(t *testing.T) {
	readiness, liveness := probePaths(t)
	_, metricsPath, _ := deciderJob(t)
	w := startWorker(t)
	for _, path := range []string{readiness, liveness} {
		if code, body := w.get(t, path); code != http.StatusOK {
			t.Errorf("the Kubernetes probe's GET %s: %d %s, want 200", path, code, body)
		}
	}

	const open = `{"type":"OpenAccount","data":{"owner":"ops"},"commandId":"deploy-test-1"}`
	w.post(t, open)
	w.post(t, open)
	cl, err := kgo.NewClient(kgo.SeedBrokers(w.broker))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	topic := topology.TopicsOf("bank", accounts.Name).Commands
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: []byte("no key")}).FirstErr(); err != nil {
		t.Fatal(err)
	}

	// The dead letter is counted when its transaction commits.
	var scraped map[string]bool
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		scraped = w.scrape(t, metricsPath)
		if scraped["decider_dead_letters_total"] && scraped["decider_dedupe_hits_total"] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no dead letter and dedupe hit counted after 15s; exposed: %v", scraped)
		}
	}

	src := declared(t)
	var exprs []string
	for _, r := range readAlerts(t) {
		exprs = append(exprs, r.Expr)
	}
	exprs = append(exprs, dashboardExprs(t)...)
	sourceOnly := map[string]bool{}
	for _, e := range exprs {
		for _, name := range metricNames(e) {
			switch {
			case scraped[name]:
			case name == "up": // Prometheus's own, per target
			case src[name]:
				sourceOnly[name] = true
			default:
				t.Errorf("%s (in %q): neither exposed by a worker nor declared in processor/metrics.go", name, e)
			}
		}
	}
	for name := range sourceOnly {
		t.Logf("%s: not exposed by this worker (no such event yet), declared in processor/metrics.go", name)
	}
}
