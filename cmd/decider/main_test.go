package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/deciderhq/decider/schemas"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// dev runs `decider dev` (with its HTTP API on httpAddr, none if empty)
// until the returned stop is called, and waits until it printed its
// greeting (topics exist, worker starting).
func dev(t *testing.T, listen, dataDir, httpAddr string) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{})
	done := make(chan error, 1)
	out := &notifyWriter{ch: started}
	go func() {
		done <- dispatch(ctx, []string{"dev", "--listen", listen, "--data-dir", dataDir, "--http", httpAddr, "--partitions", "4", "--log-level", "warn"}, out)
	}()
	select {
	case <-started:
	case err := <-done:
		t.Fatalf("dev stopped: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("dev did not start")
	}
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("dev: %v", err)
		}
	}
}

type notifyWriter struct {
	ch   chan struct{}
	once bool
}

func (w *notifyWriter) Write(p []byte) (int, error) {
	if !w.once {
		w.once = true
		close(w.ch)
	}
	return len(p), nil
}

func send(t *testing.T, listen string, args ...string) schemas.Reply {
	t.Helper()
	var out bytes.Buffer
	args = append([]string{"send", "--brokers", listen, "--timeout", "30s"}, args...)
	if err := dispatch(context.Background(), args, &out); err != nil {
		t.Fatalf("send %v: %v", args, err)
	}
	var rep schemas.Reply
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("send printed %q: %v", out.String(), err)
	}
	return rep
}

// The README's tour: dev, send, restart with the same data dir, balances
// kept.
func TestDevSendRestart(t *testing.T) {
	listen, dir := freeAddr(t), t.TempDir()
	stop := dev(t, listen, dir, "")
	if r := send(t, listen, "--id", "acc-1", "--type", "OpenAccount", "--data", `{"owner":"ada"}`); r.Status != schemas.Accepted || r.Version != 1 {
		t.Fatalf("open: %+v", r)
	}
	if r := send(t, listen, "--id", "acc-1", "--type", "decider.examples.accounts.Deposit", "--data", `{"amount":100}`); r.Status != schemas.Accepted || r.Version != 2 {
		t.Fatalf("deposit: %+v", r)
	}
	if r := send(t, listen, "--id", "acc-1", "--type", "Withdraw", "--data", `{"amount":500}`); r.Status != schemas.Rejected || r.Reason != "insufficient_funds" {
		t.Fatalf("withdraw: %+v", r)
	}
	stop()

	httpAddr := freeAddr(t)
	stop = dev(t, listen, dir, httpAddr)
	defer stop()
	if r := send(t, listen, "--id", "acc-1", "--type", "Withdraw", "--data", `{"amount":100}`); r.Status != schemas.Accepted || r.Version != 3 {
		t.Fatalf("withdraw after restart: %+v (the balance of 100 must survive)", r)
	}
	// Same command id again: the first reply, nothing written.
	first := send(t, listen, "--id", "acc-1", "--type", "Deposit", "--data", `{"amount":1}`, "--command-id", "again")
	second := send(t, listen, "--id", "acc-1", "--type", "Deposit", "--data", `{"amount":1}`, "--command-id", "again")
	if first != second || first.Version != 4 {
		t.Fatalf("retry with the same id: %+v then %+v, want the same reply at version 4", first, second)
	}

	// The tour's HTTP lines.
	resp, err := http.Post("http://"+httpAddr+"/v1/account/acc-2/commands", "application/json", strings.NewReader(`{"type":"OpenAccount","data":{"owner":"bob"}}`))
	if err != nil {
		t.Fatal(err)
	}
	var rep schemas.Reply
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil || resp.StatusCode != 200 || rep.Status != schemas.Accepted {
		t.Fatalf("POST OpenAccount: %d %+v %v", resp.StatusCode, rep, err)
	}
	resp.Body.Close()
	resp, err = http.Get("http://" + httpAddr + "/v1/account/acc-1?minVersion=4")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got struct {
		Version int64
		State   struct{ Balance int64 }
	}
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || resp.StatusCode != 200 || got.Version != 4 || got.State.Balance != 1 {
		t.Fatalf("GET acc-1: %d %+v %v, want version 4, balance 1", resp.StatusCode, got, err)
	}
}

func TestSendRefusesBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--id", "a", "--type", "Depost"}, "not a command of account"},
		{[]string{"--id", "a", "--type", "Deposit", "--data", `{"amont":1}`}, "missing field"},
		{[]string{"--id", "a", "--type", "Deposit", "--data", `{"amount":"x"}`}, "not a valid long"},
		{[]string{"--type", "Deposit"}, "--id and --type are required"},
	} {
		err := dispatch(context.Background(), append([]string{"send", "--brokers", "127.0.0.1:1"}, tc.args...), &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("send %v: %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}

func TestEnvironmentSetsFlags(t *testing.T) {
	t.Setenv("DECIDER_LISTEN", "127.0.0.1:notaport")
	err := dispatch(context.Background(), []string{"broker", "--data-dir", t.TempDir()}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "notaport") {
		t.Fatalf("DECIDER_LISTEN was not applied: %v", err)
	}
}

// Flags that make an operator command write, or choose what it acts on,
// are not taken from the environment; the others are.
func TestSafetyFlagsIgnoreTheEnvironment(t *testing.T) {
	t.Setenv("DECIDER_YES", "true")
	t.Setenv("DECIDER_APP", "other")
	fs := newFlags("rebuild")
	yes := fs.Bool("yes", false, "")
	app := fs.String("app", "bank", "")
	if err := parse(fs, nil); err != nil {
		t.Fatal(err)
	}
	if *yes || *app != "other" {
		t.Errorf("--yes = %v (want false: not from DECIDER_YES), --app = %q (want other from DECIDER_APP)", *yes, *app)
	}
}
