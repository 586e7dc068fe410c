package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/deciderhq/decider/client"
	"github.com/deciderhq/decider/examples/accounts"
	"github.com/deciderhq/decider/processor"
	"github.com/deciderhq/decider/processor/httpapi"
	"github.com/deciderhq/decider/statestore"
	"github.com/deciderhq/decider/topology"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// cluster is a kfake broker with the bank app's topics.
type cluster struct {
	t     testing.TB
	kafka []kgo.Opt
	app   *topology.App
}

func newCluster(t testing.TB) *cluster {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.GroupMinSessionTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	app, err := accounts.App(4)
	if err != nil {
		t.Fatal(err)
	}
	kafka := []kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...)}
	admin, err := kgo.NewClient(kafka...)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if err := topology.EnsureTopics(context.Background(), kadm.NewClient(admin), app, topology.TopicOptions{}); err != nil {
		t.Fatal(err)
	}
	return &cluster{t: t, kafka: kafka, app: app}
}

// node is a worker with its HTTP API on a test server.
type node struct {
	w   *processor.Worker
	srv *httptest.Server
	reg *prometheus.Registry
}

func (c *cluster) start(name string) *node {
	t := c.t
	srv := httptest.NewUnstartedServer(nil)
	store, err := statestore.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := prometheus.NewRegistry()
	w, err := processor.New(processor.Config{
		App: c.app, Store: store, Kafka: c.kafka, InstanceID: name, Logger: log,
		SessionTimeout: time.Second, TransactionTimeout: 2 * time.Second,
		Advertise: srv.Listener.Addr().String(), Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(client.Config{App: c.app.Name(), Kafka: c.kafka})
	if err != nil {
		t.Fatal(err)
	}
	api, err := httpapi.New(httpapi.Config{App: c.app, Worker: w, Client: cl, Logger: log, MaxBodyBytes: 4096, Gatherer: reg})
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = api
	srv.Start()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker %s: %v", name, err)
		}
		srv.Close()
		cl.Close()
		store.Close()
	})
	return &node{w: w, srv: srv, reg: reg}
}

// do sends a request and decodes the JSON answer.
func (n *node) do(t testing.TB, method, path, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, n.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("%s %s: %d, not JSON: %q", method, path, resp.StatusCode, b)
	}
	return resp.StatusCode, out
}

// waitMetrics waits until /metrics has every one of lines.
func (n *node) waitMetrics(t *testing.T, lines ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(n.srv.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		metrics, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var missing []string
		for _, l := range lines {
			if !bytes.Contains(metrics, []byte(l)) {
				missing = append(missing, l)
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics has no %q:\n%s", missing, metrics)
		}
		time.Sleep(20 * time.Millisecond) // polling the condition
	}
}

// ready waits until path stops answering 503 (the partition is restoring
// or has no known owner yet) and returns the answer.
func (n *node) ready(t testing.TB, method, path, body string) (int, map[string]any) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, out := n.do(t, method, path, body)
		if code != http.StatusServiceUnavailable {
			return code, out
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s %s: still %d %v", method, path, code, out)
		}
		time.Sleep(20 * time.Millisecond) // polling the condition: the group settles in its own time
	}
}

func TestCommandsAndReads(t *testing.T) {
	c := newCluster(t)
	a := c.start("a")
	post := func(id, body string) (int, map[string]any) {
		t.Helper()
		return a.do(t, "POST", "/v1/account/"+id+"/commands", body)
	}
	want := func(code int, out map[string]any, wantCode int, wantFields map[string]any) {
		t.Helper()
		if code != wantCode {
			t.Fatalf("got %d %v, want %d", code, out, wantCode)
		}
		for k, v := range wantFields {
			if fmt.Sprint(out[k]) != fmt.Sprint(v) {
				t.Errorf("%s = %v, want %v (in %v)", k, out[k], v, out)
			}
		}
	}

	code, out := post("acc-1", `{"type":"OpenAccount","data":{"owner":"ada"}}`)
	want(code, out, 200, map[string]any{"status": "ACCEPTED", "version": 1, "events": 1})
	code, out = post("acc-1", `{"type":"decider.examples.accounts.Deposit","data":{"amount":100},"correlationId":"c-1"}`)
	want(code, out, 200, map[string]any{"status": "ACCEPTED", "version": 2})

	// Read your own write: the reply came, the state store follows.
	code, out = a.ready(t, "GET", "/v1/account/acc-1?minVersion=2", "")
	want(code, out, 200, map[string]any{"aggregateType": "account", "id": "acc-1", "version": 2})
	if st, _ := json.Marshal(out["state"]); !bytes.Contains(st, []byte(`"balance":100`)) || !bytes.Contains(st, []byte(`"owner":"ada"`)) {
		t.Errorf("state = %s, want owner ada and balance 100", st)
	}
	// A version not reached in time: 408 with the aggregate as it is.
	code, out = a.do(t, "GET", "/v1/account/acc-1?minVersion=9&timeout=50ms", "")
	want(code, out, 408, map[string]any{"version": 2})
	// An aggregate without events: 404 with its initial state.
	code, out = a.ready(t, "GET", "/v1/account/nobody", "")
	want(code, out, 404, map[string]any{"version": 0})

	// Statuses map to HTTP codes.
	code, out = post("acc-1", `{"type":"Withdraw","data":{"amount":1000}}`)
	want(code, out, 409, map[string]any{"status": "REJECTED", "reason": "insufficient_funds", "version": 2})
	code, out = post("acc-1", `{"type":"Deposit","data":{"amount":1},"expectedVersion":1}`)
	want(code, out, 409, map[string]any{"status": "CONFLICT", "reason": "version_mismatch", "version": 2})
	code, out = post("acc-1", `{"type":"Deposit","data":{"amount":1},"deadline":"2020-01-01T00:00:00Z"}`)
	want(code, out, 408, map[string]any{"status": "EXPIRED", "reason": "deadline_passed"})

	// A caller that gave up retries with the command id it was given and
	// gets the one reply, applied once.
	code, out = post("acc-1", `{"type":"Deposit","data":{"amount":5},"commandId":"dep-5"}`)
	want(code, out, 200, map[string]any{"status": "ACCEPTED", "version": 3, "commandId": "dep-5"})
	code, out = post("acc-1", `{"type":"Deposit","data":{"amount":5},"commandId":"dep-5"}`)
	want(code, out, 200, map[string]any{"status": "ACCEPTED", "version": 3, "commandId": "dep-5"})

	// Requests that cannot become a command are answered here.
	for _, tc := range []struct {
		path, body string
		code       int
		error      string
	}{
		{"/v1/account/acc-1/commands", `{"type":"Steal","data":{}}`, 400, "unknown_type"},
		{"/v1/account/acc-1/commands", `{"type":"Deposit","data":{"amount":"lots"}}`, 400, "bad_payload"},
		{"/v1/account/acc-1/commands", `{"type":"Deposit","data":{"amount":1,"extra":2}}`, 400, "bad_payload"},
		{"/v1/account/acc-1/commands", `{"type":"Deposit","data":{"amount":1},"bogus":1}`, 400, "bad_request"},
		{"/v1/account/acc-1/commands", `{"type":"Deposit",`, 400, "bad_request"},
		{"/v1/account/acc-1/commands", `{"type":"Deposit","data":{"amount":1},"expectedVersion":-1}`, 400, "bad_request"},
		{"/v1/account/acc-1/commands", `{"type":"OpenAccount","data":{"owner":"` + strings.Repeat("x", 5000) + `"}}`, 413, "too_large"},
		{"/v1/account/acc-1/commands?timeout=soon", `{"type":"Deposit","data":{"amount":1}}`, 400, "bad_request"},
		{"/v1/ledger/l-1/commands", `{"type":"Deposit","data":{"amount":1}}`, 404, "unknown_aggregate_type"},
	} {
		code, out := a.do(t, "POST", tc.path, tc.body)
		want(code, out, tc.code, map[string]any{"error": tc.error})
	}
	code, out = a.do(t, "GET", "/v1/account/acc-1?minVersion=x", "")
	want(code, out, 400, map[string]any{"error": "bad_request"})

	// Health and metrics.
	code, out = a.do(t, "GET", "/readyz", "")
	want(code, out, 200, map[string]any{"ready": true})
	// Counts are added just after the commit that sent the replies.
	a.waitMetrics(t,
		`decider_commands_total{aggregate_type="account",status="ACCEPTED"} 4`, // open, deposit, dep-5 twice
		`decider_commands_total{aggregate_type="account",status="REJECTED"} 1`,
		`decider_commands_total{aggregate_type="account",status="CONFLICT"} 1`,
		`decider_commands_total{aggregate_type="account",status="EXPIRED"} 1`,
		`decider_dedupe_hits_total{aggregate_type="account"} 1`,
		`decider_partitions_owned{aggregate_type="account"} 4`,
		`decider_records_produced_total{kind="event"} 3`,
		`decider_ready 1`,
		`decider_transactions_total{outcome="committed"}`,
		`decider_command_latency_seconds_count{aggregate_type="account"}`,
		`decider_state_store_size_bytes`,
		`decider_kafka_`,
	)

	// No reply in time: 408 with the command id to retry with.
	code, out = a.do(t, "POST", "/v1/account/acc-1/commands?timeout=1ns", `{"type":"Deposit","data":{"amount":1},"commandId":"late"}`)
	want(code, out, 408, map[string]any{"error": "timeout", "commandId": "late"})
}

// Any worker answers a read: the partition's owner from its store, another
// by proxying to the owner it learnt from the group.
func TestReadsAreAnsweredByTheOwner(t *testing.T) {
	c := newCluster(t)
	a := c.start("a")
	ids := make([]string, 16)
	for i := range ids {
		ids[i] = fmt.Sprintf("acc-%d", i)
		if code, out := a.do(t, "POST", "/v1/account/"+ids[i]+"/commands", `{"type":"OpenAccount","data":{"owner":"o"}}`); code != 200 {
			t.Fatalf("open %s: %d %v", ids[i], code, out)
		}
	}
	b := c.start("b")
	// Wait until the group has given b partitions and a knows it.
	bAddr := b.srv.Listener.Addr().String()
	deadline := time.Now().Add(20 * time.Second)
	for moved := false; !moved; {
		for _, id := range ids {
			_, err := a.w.Read(context.Background(), "account", id, 0)
			if ne := (*processor.NotOwnerError)(nil); errors.As(err, &ne) && ne.Owner == bAddr {
				moved = true
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("worker a never learnt that b owns a partition")
		}
		time.Sleep(20 * time.Millisecond) // polling the condition: the group settles in its own time
	}
	for _, n := range []*node{a, b} {
		for _, id := range ids {
			code, out := n.ready(t, "GET", "/v1/account/"+id+"?minVersion=1", "")
			if code != 200 || out["id"] != id || out["version"] != 1.0 {
				t.Errorf("GET %s from %s: %d %v", id, n.srv.URL, code, out)
			}
		}
	}
}

// A worker that has not joined its group is not ready, and says why.
func TestNotReadyBeforeJoining(t *testing.T) {
	c := newCluster(t)
	store, err := statestore.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	w, err := processor.New(processor.Config{App: c.app, Store: store, Kafka: c.kafka, InstanceID: "idle"})
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(client.Config{App: c.app.Name(), Kafka: c.kafka})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	api, err := httpapi.New(httpapi.Config{App: c.app, Worker: w, Client: cl})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api)
	defer srv.Close()
	code, out := (&node{srv: srv}).do(t, "GET", "/readyz", "")
	if code != http.StatusServiceUnavailable || out["ready"] != false || out["reason"] != "not running" {
		t.Errorf("/readyz = %d %v, want 503 not running", code, out)
	}
	code, out = (&node{srv: srv}).do(t, "GET", "/v1/account/acc-1", "")
	if code != http.StatusServiceUnavailable || out["error"] != "not_ready" {
		t.Errorf("read = %d %v, want 503 not_ready", code, out)
	}
}
