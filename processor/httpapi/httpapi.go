// Package httpapi is decider's HTTP API, served by every worker: send a
// command and get its reply, read an aggregate's state. It is for callers
// that would rather speak HTTP than Kafka; both paths reach the same
// workers and give the same answers.
//
//	POST /v1/{aggregateType}/{id}/commands
//	  {"type": "Deposit", "data": {"amount": 100},
//	   "commandId": "…", "expectedVersion": 3, "deadline": "2026-11-23T12:00:00Z", "correlationId": "…"}
//	GET  /v1/{aggregateType}/{id}[?minVersion=N]
//
// A command is sent through Kafka like any caller's (it is not decided in
// the HTTP handler) and answered with its decider.Reply as JSON:
//
//	200 ACCEPTED
//	409 REJECTED or CONFLICT
//	408 EXPIRED, or no reply in time (the body names the command id: send
//	    again with the same commandId to learn what happened, never twice)
//	400 INVALID, or a request that cannot become a command (unknown type,
//	    data that does not fit the command's schema, bad options)
//	500 FAILED
//
// "type" is the command's short or full Avro name, "data" the command in
// Avro JSON (as schemas.Registry.EncodeJSON reads it).
//
// A read is answered by the worker that owns the aggregate's partition,
// from its state store: {"aggregateType", "id", "version", "state"}, the
// state in Avro JSON; 404 (same body, version 0, the initial state) when the
// aggregate has no events. Any worker can be asked: one that does not own
// the partition proxies the request to the owner, whose address the group
// shares (processor.Config.Advertise). With minVersion the read waits until
// the aggregate has that many events, so that a caller reads its own
// writes; 408 if it does not get there in time. 503 with Retry-After while
// the partition is being restored or moves between workers.
//
// Every wait is bounded: ?timeout=5s on either request, at most
// Config.MaxTimeout. Request bodies are bounded by Config.MaxBodyBytes
// (413). Errors are JSON: {"error": code, "message": text}.
//
// Operations:
//
//	GET /healthz   200 while the process serves HTTP
//	GET /readyz    200 {"ready": true} when the worker is a member of its
//	               group with every assigned partition restored; else 503
//	               {"ready": false, "reason": "…"}
//	GET /metrics   Prometheus metrics of Config.Gatherer, when set
package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"time"

	"github.com/deciderhq/decider/client"
	"github.com/deciderhq/decider/processor"
	"github.com/deciderhq/decider/schemas"
	"github.com/deciderhq/decider/topology"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Config configures the API. App, Worker and Client are required.
type Config struct {
	App    *topology.App
	Worker *processor.Worker // answers reads of the partitions it owns
	Client *client.Client    // sends commands
	Logger *slog.Logger      // default slog.Default()
	// Gatherer, if set, is served on /metrics (the registry the worker's
	// Config.Registerer writes to).
	Gatherer prometheus.Gatherer
	// MaxBodyBytes bounds a command request's body. Default 1 MiB.
	MaxBodyBytes int64
	// Timeout is how long a request waits for a reply or a version when it
	// does not say (?timeout=). Default 10s.
	Timeout time.Duration
	// MaxTimeout bounds ?timeout=. Default 60s. The server's WriteTimeout
	// must exceed it.
	MaxTimeout time.Duration
}

// forwardedHeader marks a read proxied from another worker, which is not
// proxied again.
const forwardedHeader = "Decider-Forwarded"

type api struct {
	cfg   Config
	proxy *httputil.ReverseProxy
}

// New returns the API's handler.
func New(cfg Config) (http.Handler, error) {
	if cfg.App == nil || cfg.Worker == nil || cfg.Client == nil {
		return nil, errors.New("httpapi: Config.App, Worker and Client are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 1 << 20
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.MaxTimeout <= 0 {
		cfg.MaxTimeout = time.Minute
	}
	a := &api{cfg: cfg}
	a.proxy = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(&url.URL{Scheme: "http", Host: r.In.Context().Value(ownerKey{}).(string)})
			r.Out.Header.Set(forwardedHeader, "1")
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			a.fail(w, http.StatusBadGateway, "owner_unreachable", fmt.Errorf("proxy to the owner: %w", err))
		},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/{type}/{id}/commands", a.command)
	mux.HandleFunc("GET /v1/{type}/{id}", a.read)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		a.reply(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", a.readyz)
	if cfg.Gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn)}))
	}
	return mux, nil
}

type ownerKey struct{}

func (a *api) readyz(w http.ResponseWriter, _ *http.Request) {
	if ok, reason := a.cfg.Worker.Ready(); !ok {
		a.reply(w, http.StatusServiceUnavailable, map[string]any{"ready": false, "reason": reason})
		return
	}
	a.reply(w, http.StatusOK, map[string]any{"ready": true})
}

// commandRequest is the body of a command request.
type commandRequest struct {
	Type            string          `json:"type"`
	Data            json.RawMessage `json:"data"`
	CommandID       string          `json:"commandId"`
	ExpectedVersion *int64          `json:"expectedVersion"`
	Deadline        *time.Time      `json:"deadline"`
	CorrelationID   string          `json:"correlationId"`
}

func (a *api) command(w http.ResponseWriter, r *http.Request) {
	agg, ok := a.aggregate(w, r)
	if !ok {
		return
	}
	ctx, cancel, ok := a.deadline(w, r)
	if !ok {
		return
	}
	defer cancel()
	var req commandRequest
	d := json.NewDecoder(http.MaxBytesReader(w, r.Body, a.cfg.MaxBodyBytes))
	d.DisallowUnknownFields()
	if err := d.Decode(&req); err != nil {
		if tooBig := (*http.MaxBytesError)(nil); errors.As(err, &tooBig) {
			a.fail(w, http.StatusRequestEntityTooLarge, "too_large", err)
			return
		}
		a.fail(w, http.StatusBadRequest, "bad_request", fmt.Errorf("read the request: %w", err))
		return
	}
	name, ok := agg.CommandName(req.Type)
	if !ok {
		a.fail(w, http.StatusBadRequest, "unknown_type", fmt.Errorf("%q is not a command of %s", req.Type, agg.Name()))
		return
	}
	if len(req.Data) == 0 {
		req.Data = json.RawMessage("{}")
	}
	payload, err := agg.Schemas().EncodeJSON(name, req.Data)
	if err != nil {
		a.fail(w, http.StatusBadRequest, "bad_payload", err)
		return
	}
	var opts []client.Option
	if req.CommandID != "" {
		opts = append(opts, client.CommandID(req.CommandID))
	}
	if req.ExpectedVersion != nil {
		if *req.ExpectedVersion < 0 {
			a.fail(w, http.StatusBadRequest, "bad_request", errors.New("expectedVersion must be at least 0"))
			return
		}
		opts = append(opts, client.ExpectedVersion(*req.ExpectedVersion))
	}
	if req.Deadline != nil {
		opts = append(opts, client.Deadline(*req.Deadline))
	}
	if req.CorrelationID != "" {
		opts = append(opts, client.CorrelationID(req.CorrelationID))
	}
	rep, err := a.cfg.Client.Send(ctx, agg.Name(), r.PathValue("id"), client.Raw{Type: name, Payload: payload}, opts...)
	if te := (*client.TimeoutError)(nil); errors.As(err, &te) {
		a.reply(w, http.StatusRequestTimeout, map[string]string{"error": "timeout", "message": te.Error(), "commandId": te.CommandID})
		return
	}
	if err != nil {
		a.fail(w, http.StatusServiceUnavailable, "send_failed", err)
		return
	}
	a.reply(w, replyStatus(rep.Status), rep)
}

// replyStatus maps a reply's status to an HTTP status.
func replyStatus(s schemas.Status) int {
	switch s {
	case schemas.Accepted:
		return http.StatusOK
	case schemas.Rejected, schemas.Conflict:
		return http.StatusConflict
	case schemas.Expired:
		return http.StatusRequestTimeout
	case schemas.Invalid:
		return http.StatusBadRequest
	default:
		return http.StatusInternalServerError
	}
}

// aggregateJSON is the body of a read.
type aggregateJSON struct {
	AggregateType string          `json:"aggregateType"`
	ID            string          `json:"id"`
	Version       int64           `json:"version"`
	State         json.RawMessage `json:"state"`
}

func (a *api) read(w http.ResponseWriter, r *http.Request) {
	agg, ok := a.aggregate(w, r)
	if !ok {
		return
	}
	var minVersion int64
	if s := r.URL.Query().Get("minVersion"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v < 0 {
			a.fail(w, http.StatusBadRequest, "bad_request", fmt.Errorf("minVersion %q is not an integer ≥ 0", s))
			return
		}
		minVersion = v
	}
	ctx, cancel, ok := a.deadline(w, r)
	if !ok {
		return
	}
	defer cancel()
	got, err := a.cfg.Worker.Read(ctx, agg.Name(), r.PathValue("id"), minVersion)
	var notOwner *processor.NotOwnerError
	switch {
	case errors.As(err, &notOwner) && notOwner.Owner != "" && r.Header.Get(forwardedHeader) == "":
		// The owner bounds its own wait by the same ?timeout=; this bound
		// is for an owner that does not answer at all.
		pctx, pcancel := context.WithTimeout(r.Context(), a.cfg.MaxTimeout+5*time.Second)
		defer pcancel()
		a.proxy.ServeHTTP(w, r.WithContext(context.WithValue(pctx, ownerKey{}, notOwner.Owner)))
		return
	case errors.As(err, &notOwner), errors.Is(err, processor.ErrRestoring):
		w.Header().Set("Retry-After", "1")
		a.fail(w, http.StatusServiceUnavailable, "not_ready", err)
		return
	case err != nil && !errors.Is(err, processor.ErrVersionNotReached):
		a.fail(w, http.StatusInternalServerError, "read_failed", err)
		return
	}
	state, jerr := agg.Schemas().DecodeJSON(agg.StateName(), got.State)
	if jerr != nil {
		a.fail(w, http.StatusInternalServerError, "read_failed", jerr)
		return
	}
	body := aggregateJSON{AggregateType: agg.Name(), ID: got.ID, Version: got.Version, State: state}
	switch {
	case err != nil: // the version was not reached
		a.reply(w, http.StatusRequestTimeout, body)
	case got.Version == 0:
		a.reply(w, http.StatusNotFound, body)
	default:
		a.reply(w, http.StatusOK, body)
	}
}

// aggregate returns the request's aggregate type, or answers 404.
func (a *api) aggregate(w http.ResponseWriter, r *http.Request) (*topology.Aggregate, bool) {
	agg, ok := a.cfg.App.Aggregate(r.PathValue("type"))
	if !ok {
		a.fail(w, http.StatusNotFound, "unknown_aggregate_type", fmt.Errorf("app %s has no aggregate type %q", a.cfg.App.Name(), r.PathValue("type")))
	}
	return agg, ok
}

// deadline returns the request's context bounded by its ?timeout=, or
// answers 400.
func (a *api) deadline(w http.ResponseWriter, r *http.Request) (context.Context, context.CancelFunc, bool) {
	timeout := a.cfg.Timeout
	if s := r.URL.Query().Get("timeout"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			a.fail(w, http.StatusBadRequest, "bad_request", fmt.Errorf("timeout %q is not a positive duration (e.g. 5s)", s))
			return nil, nil, false
		}
		timeout = min(d, a.cfg.MaxTimeout)
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	return ctx, cancel, true
}

func (a *api) fail(w http.ResponseWriter, status int, code string, err error) {
	if status >= 500 {
		a.cfg.Logger.Warn("http request failed", "code", code, "err", err)
	}
	a.reply(w, status, map[string]string{"error": code, "message": err.Error()})
}

func (a *api) reply(w http.ResponseWriter, status int, body any) {
	b, err := json.Marshal(body)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"encode_failed"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
