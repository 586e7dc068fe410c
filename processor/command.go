package processor

import (
	"errors"
	"fmt"
	"maps"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/deciderhq/decider/schemas"
	"github.com/twmb/franz-go/pkg/kgo"
)

// command is a command record's envelope: its CloudEvents headers, read but
// not yet decoded.
type command struct {
	rec            *kgo.Record
	id             string // ce_id
	typ            string // ce_type
	hasSource      bool   // ce_source is set
	replyTo        string // ce_replyto; "" sends no reply
	replyPartition int32  // ce_replypartition; -1 when absent or unreadable

	expectedVersion int64     // ce_expectedversion; -1 when absent
	deadline        time.Time // ce_deadline; zero when absent

	// The header values copied onto everything emitted for the command, as
	// read, so that each record reuses them rather than converting again:
	// ce_id, ce_correlationid (defaulting to ce_id) and ce_time (defaulting
	// to the record's timestamp).
	rawID, rawCorrelationID, rawTime []byte
}

// Bounds on what a command carries into every record the worker writes for
// it (keys, headers, the dedupe window of its snapshot), so that none of
// those records can outgrow what the broker accepts.
const (
	maxIDBytes     = 256      // ce_id, ce_correlationid
	maxKeyBytes    = 1024     // the aggregate id
	maxHeaderBytes = 16 << 10 // all headers together
)

// invalidError is why a command cannot be decided: a reason code for the
// INVALID reply and a detail for the dead-letter copy.
type invalidError struct {
	reason string
	detail string
}

func (e *invalidError) Error() string { return e.reason + ": " + e.detail }

func invalid(reason, format string, args ...any) error {
	return &invalidError{reason: reason, detail: fmt.Sprintf(format, args...)}
}

// parseCommand reads a command's headers into c. It fills the envelope even
// on error, as far as it could be read, so that the INVALID reply still
// reaches a readable ce_replyto.
func parseCommand(c *command, r *kgo.Record, maxPayload int) error {
	*c = command{rec: r, replyPartition: -1, expectedVersion: -1}
	var specVersion []byte
	var badHeader error
	for _, h := range r.Headers {
		switch h.Key {
		case schemas.HeaderSpecVersion:
			specVersion = h.Value
		case schemas.HeaderID:
			c.id, c.rawID = string(h.Value), h.Value
		case schemas.HeaderType:
			c.typ = names.intern(h.Value)
		case schemas.HeaderSource:
			c.hasSource = len(h.Value) > 0
		case schemas.HeaderReplyTo:
			c.replyTo = names.intern(h.Value)
		case schemas.HeaderReplyPartition:
			if p, err := strconv.ParseInt(string(h.Value), 10, 32); err == nil && p >= 0 {
				c.replyPartition = int32(p)
			}
		case schemas.HeaderCorrelationID:
			c.rawCorrelationID = h.Value
		case schemas.HeaderTime:
			c.rawTime = h.Value
		case schemas.HeaderExpectedVersion:
			n, err := strconv.ParseInt(string(h.Value), 10, 64)
			if err != nil || n < 0 {
				badHeader = invalid("bad_header", "%s %q is not a version (an integer >= 0)", h.Key, h.Value)
			}
			c.expectedVersion = n
		case schemas.HeaderDeadline:
			t, err := time.Parse(time.RFC3339Nano, string(h.Value))
			if err != nil {
				badHeader = invalid("bad_header", "%s %q is not an RFC 3339 time", h.Key, h.Value)
			}
			c.deadline = t
		}
	}
	headerBytes := 0
	for _, h := range r.Headers {
		headerBytes += len(h.Key) + len(h.Value)
	}
	switch {
	case len(c.id) > maxIDBytes:
		badHeader = invalid("bad_header", "%s is longer than %d bytes", schemas.HeaderID, maxIDBytes)
	case len(c.rawCorrelationID) > maxIDBytes:
		c.rawCorrelationID = nil
		badHeader = invalid("bad_header", "%s is longer than %d bytes", schemas.HeaderCorrelationID, maxIDBytes)
	case len(r.Key) > maxKeyBytes:
		badHeader = invalid("too_large", "a key of %d bytes exceeds the limit of %d", len(r.Key), maxKeyBytes)
	case headerBytes > maxHeaderBytes:
		badHeader = invalid("too_large", "headers of %d bytes exceed the limit of %d", headerBytes, maxHeaderBytes)
	}
	if len(c.rawCorrelationID) == 0 {
		c.rawCorrelationID = c.rawID
	}
	if len(c.rawTime) == 0 {
		c.rawTime = r.Timestamp.UTC().AppendFormat(nil, time.RFC3339Nano)
	}
	switch {
	case len(r.Key) == 0:
		return invalid("missing_key", "a command's key is its aggregate id")
	case c.id == "":
		return invalid("missing_header", "%s is required", schemas.HeaderID)
	case c.typ == "":
		return invalid("missing_header", "%s is required", schemas.HeaderType)
	case !c.hasSource:
		return invalid("missing_header", "%s is required", schemas.HeaderSource)
	case string(specVersion) != schemas.SpecVersion:
		return invalid("bad_specversion", "%s is %q, want %q", schemas.HeaderSpecVersion, specVersion, schemas.SpecVersion)
	case len(r.Value) > maxPayload:
		return invalid("too_large", "payload of %d bytes exceeds the limit of %d", len(r.Value), maxPayload)
	}
	return badHeader
}

// names interns the header values that repeat from command to command
// (types, reply topics), so that reading them allocates nothing.
var names interner

// Bounds of the interned strings, so that callers sending ever new values
// cannot grow them: past maxInterned values, or for a value longer than
// maxInternedBytes, the value is converted each time.
const (
	maxInterned      = 4096
	maxInternedBytes = 256
)

// interner looks values up without a lock, in a map that is never changed
// once published: a new value (rare) publishes a copy with it added. (With
// a mutex, the shares of a batch decided in parallel took turns for it,
// twice a command.)
type interner struct {
	mu sync.Mutex                        // serialises additions
	m  atomic.Pointer[map[string]string] // nil until the first addition
}

func (in *interner) intern(b []byte) string {
	if m := in.m.Load(); m != nil {
		if s, ok := (*m)[string(b)]; ok {
			return s
		}
	}
	s := string(b)
	if len(b) > maxInternedBytes {
		return s
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	var old map[string]string
	if m := in.m.Load(); m != nil {
		old = *m
	}
	if got, ok := old[s]; ok {
		return got
	}
	if len(old) < maxInterned {
		m := make(map[string]string, len(old)+1)
		maps.Copy(m, old)
		m[s] = s
		in.m.Store(&m)
	}
	return s
}

// decodeError maps a payload decoding error to an INVALID reason.
func decodeError(err error) error {
	reason := "bad_payload"
	switch {
	case errors.Is(err, schemas.ErrUnknownType):
		reason = "unknown_type"
	case errors.Is(err, schemas.ErrFraming):
		reason = "bad_framing"
	case errors.Is(err, schemas.ErrUnknownSchema):
		reason = "unknown_schema"
	}
	return &invalidError{reason: reason, detail: err.Error()}
}
