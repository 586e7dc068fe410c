package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/deciderhq/decider/schemas"
	"github.com/deciderhq/decider/topology"
	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

const verifyUsage = `Reads the commands, events, snapshots and replies topics of an app
(read_committed, from their start to the end offsets listed when it starts)
and checks the invariants of exactly-once processing:

  lost         a command sent with ce_id and ce_replyto = A.T.replies has
               fewer replies than it was sent (a command id re-sent to the
               same aggregate is one unit: N sends need N replies)
  duplicated   a command id has more replies than it was sent
  conflicting  the replies to one command id of one aggregate differ
  orphan       a reply in A.T.replies answers no command of A.T.commands
  version      an aggregate's events do not carry versions 1, 2, 3, ... in
               offset order (a gap, a repeat, a bad header)
  partition    an event or snapshot is not in the partition its key hashes to
  events       a command's events (by ce_causationid) are not as many as its
               reply says: ACCEPTED with n events, n; any other status, none
  causation    events name, in ce_causationid, no command of their
               aggregate (or none at all)
  snapshot     an aggregate's latest snapshot is not at version = its number
               of events, or its state is not the fold of those events with
               the domain's Evolve; or events without a snapshot
  undecodable  a reply, event or snapshot that does not decode

A command on a partition its key does not hash to is forwarded by the worker:
the copy is checked, the original needs no reply of its own. Commands without
ce_id or ce_replyto get no reply by design and are not checked for one.
Commands at or after the consumer group's committed offset are pending (not
yet processed): their replies are not required. Run verify on a drained app
(no lag): events and snapshots written while it lists the end offsets can
otherwise be reported. The topics must hold their full history: records lost
to retention make what refers to them look wrong (a note says so). A command
id re-sent after its aggregate took more than the worker's dedupe window of
other commands is decided again, which verify reports (conflicting, events).
This binary knows the example's aggregate type, account; the partition count
is read from the commands topic.

Memory: the replies topic is read first into an index of 55 to 80 bytes per
command id answered in it (73 MiB for a million), held until the end. Then
the partitions are checked, --parallel at once, each reading partition p of
commands, events and snapshots together and holding about 150 bytes per
command id and 300 per aggregate of that partition, with the aggregates'
folded states (14 MiB for 63,000 commands of 6,300 accounts), and at most
32 MiB of fetch buffers. Besides: 16 bytes per pending command and a line
per unanswered misrouted one. Nothing else grows with the topics.

Prints a summary and the violations (--examples of each class) to stdout,
progress to stderr. Exits 0 when every check passes, 4 on violations, 1 when
the topics could not be read.

Examples:
  decider verify --brokers localhost:9092
  DECIDER_BROKERS=k1:9092,k2:9092 decider verify --app bank --parallel 8
`

const defaultVerifyParallel = 4

func runVerify(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("verify")
	kafkaOpts := kafkaFlags(fs)
	appName := fs.String("app", "bank", "app name")
	parallel := fs.Int("parallel", defaultVerifyParallel, "partitions checked at once (memory grows with it)")
	examples := fs.Int("examples", 100, "violations printed per class (all are counted)")
	if err := parse(fs, args); err != nil {
		return err
	}
	kafka, err := kafkaOpts()
	if err != nil {
		return err
	}
	cl, err := connect(ctx, kafka)
	if err != nil {
		return err
	}
	app, err := discoverApp(ctx, kadm.NewClient(cl), *appName)
	cl.Close()
	if err != nil {
		return err
	}
	cfg := defaultVerifyConfig()
	cfg.parallel = max(*parallel, 1)
	cfg.examples = max(*examples, 0)
	rep, err := verifyWith(ctx, kafka, app, os.Stderr, cfg)
	if err != nil && !errors.Is(err, errViolations) {
		return err
	}
	rep.print(stdout)
	if err != nil {
		return &exitCodeError{code: 4, err: err}
	}
	return nil
}

// errViolations is wrapped by the error verify returns when a check failed.
var errViolations = errors.New("invariants violated")

// violationClass is one kind of broken invariant.
type violationClass int

const (
	classLost violationClass = iota
	classDuplicated
	classConflicting
	classOrphan
	classVersion
	classPartition
	classEvents
	classCausation
	classSnapshot
	classUndecodable
	numViolationClasses
)

var violationClassNames = [numViolationClasses]string{
	"lost", "duplicated", "conflicting", "orphan", "version", "partition", "events", "causation", "snapshot", "undecodable",
}

func (c violationClass) String() string { return violationClassNames[c] }

// violations are the violations of one class: all counted, the first few
// described.
type violations struct {
	Count    int64
	Examples []string
}

// report is what verify found.
type report struct {
	App        string
	Partitions int32 // of the (last) aggregate type's commands topic

	Commands       int64 // records read from the commands topics
	Misrouted      int64 // of which on a partition their key does not hash to
	Pending        int64 // of which at or after the group's committed offset
	NoReply        int64 // of which without ce_id or ce_replyto: no reply by design
	ReplyElsewhere int64 // of which with ce_replyto naming another topic: not checked
	Replies        int64 // records read from the replies topics
	Events         int64 // records read from the events topics
	Aggregates     int64 // aggregates with events or a snapshot
	Snapshots      int64 // records read from the snapshots topics

	Violations [numViolationClasses]violations
	Notes      []string // what limits the checks (pending commands, truncated topics)
}

// count returns the number of violations of class c.
func (r *report) count(c violationClass) int64 { return r.Violations[c].Count }

// total returns the number of violations of every class.
func (r *report) total() int64 {
	var n int64
	for _, v := range r.Violations {
		n += v.Count
	}
	return n
}

// err returns nil, or an error wrapping errViolations that counts them.
func (r *report) err() error {
	if r.total() == 0 {
		return nil
	}
	var parts []string
	for c, v := range r.Violations {
		if v.Count > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", v.Count, violationClass(c)))
		}
	}
	return fmt.Errorf("%w: %s", errViolations, strings.Join(parts, ", "))
}

// print writes the summary, the notes and the violations.
func (r *report) print(w io.Writer) {
	fmt.Fprintf(w, "decider verify: app %s, %d partitions\n", r.App, r.Partitions)
	fmt.Fprintf(w, "  commands    %d (%d misrouted, %d pending, %d without a reply address, %d replying elsewhere)\n",
		r.Commands, r.Misrouted, r.Pending, r.NoReply, r.ReplyElsewhere)
	fmt.Fprintf(w, "  replies     %d\n  events      %d\n  aggregates  %d\n  snapshots   %d\n", r.Replies, r.Events, r.Aggregates, r.Snapshots)
	fmt.Fprintf(w, "violations: %d\n", r.total())
	for c, v := range r.Violations {
		fmt.Fprintf(w, "  %-12s %d\n", violationClass(c), v.Count)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	for c, v := range r.Violations {
		if v.Count == 0 {
			continue
		}
		fmt.Fprintf(w, "\n%s (%d):\n", violationClass(c), v.Count)
		for _, e := range v.Examples {
			fmt.Fprintf(w, "  %s\n", e)
		}
		if more := v.Count - int64(len(v.Examples)); more > 0 {
			fmt.Fprintf(w, "  ... and %d more\n", more)
		}
	}
	if r.total() == 0 {
		fmt.Fprintln(w, "ok: every invariant holds")
	}
}

// verifyConfig tunes verify.
type verifyConfig struct {
	parallel int           // partitions checked at once
	examples int           // violations described per class
	idle     time.Duration // a read that gets nothing for this long stops
	every    int64         // a progress line per this many records of a partition
}

func defaultVerifyConfig() verifyConfig {
	return verifyConfig{parallel: defaultVerifyParallel, examples: 100, idle: 10 * time.Second, every: 1 << 20}
}

// verify checks the invariants of every aggregate type of app on the
// cluster kafka connects to, writing progress lines to progress (nil: none).
// The report holds the counts and the violations; the error wraps
// errViolations when a check failed, and is any other error when the topics
// could not be read (the report is then partial).
func verify(ctx context.Context, kafka []kgo.Opt, app *topology.App, progress io.Writer) (report, error) {
	return verifyWith(ctx, kafka, app, progress, defaultVerifyConfig())
}

func verifyWith(ctx context.Context, kafka []kgo.Opt, app *topology.App, progress io.Writer, cfg verifyConfig) (report, error) {
	if progress == nil {
		progress = io.Discard
	}
	v := &verifier{kafka: kafka, cfg: cfg, progress: progress, seed: maphash.MakeSeed(), lost: map[uint64]struct{}{}}
	v.rep.App = app.Name()
	cl, err := kgo.NewClient(kafka...)
	if err != nil {
		return v.rep, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	for _, agg := range app.Aggregates() {
		c := &aggCheck{v: v, agg: agg, topics: app.Topics(agg), n: agg.Partitions(), name: app.Name() + "/" + agg.Name()}
		v.rep.Partitions = c.n
		if err := c.run(ctx, adm, app.Group()); err != nil {
			return v.rep, err
		}
	}
	for i := range v.rep.Violations {
		slices.Sort(v.rep.Violations[i].Examples)
	}
	slices.Sort(v.rep.Notes)
	return v.rep, v.rep.err()
}

// verifier is one run of verify.
type verifier struct {
	kafka    []kgo.Opt
	cfg      verifyConfig
	progress io.Writer
	seed     maphash.Seed

	mu  sync.Mutex // guards rep and progress
	rep report

	lostMu sync.Mutex
	lost   map[uint64]struct{} // units already reported lost
}

// misroutedLost is a processed misrouted command without a reply: lost,
// unless its forwarded copy is pending in the partition it hashes to.
type misroutedLost struct {
	k       uint64
	message string
}

// violate counts a violation and describes it while its class has room.
func (v *verifier) violate(c violationClass, format string, args ...any) {
	v.mu.Lock()
	defer v.mu.Unlock()
	vs := &v.rep.Violations[c]
	vs.Count++
	if len(vs.Examples) < v.cfg.examples {
		vs.Examples = append(vs.Examples, fmt.Sprintf(format, args...))
	}
}

func (v *verifier) note(format string, args ...any) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.rep.Notes = append(v.rep.Notes, fmt.Sprintf(format, args...))
}

func (v *verifier) progressf(format string, args ...any) {
	v.mu.Lock()
	defer v.mu.Unlock()
	fmt.Fprintf(v.progress, format+"\n", args...)
}

// firstLost reports whether unit k is reported lost for the first time.
func (v *verifier) firstLost(k uint64) bool {
	v.lostMu.Lock()
	defer v.lostMu.Unlock()
	if _, ok := v.lost[k]; ok {
		return false
	}
	v.lost[k] = struct{}{}
	return true
}

// read reads spans as readSpans does, noting where it stopped for want of
// records.
func (v *verifier) read(ctx context.Context, spans map[string]map[int32]span, handle func(r *kgo.Record)) error {
	stalled, err := readSpans(ctx, v.kafka, spans, v.cfg.idle, handle)
	for tp, end := range stalled {
		v.note("%s/%d: nothing more read for %v before end offset %d (an open transaction?): records after the last one read are not checked", tp.topic, tp.partition, v.cfg.idle, end)
	}
	return err
}

// replyEntry is what verify keeps of the replies to one command id of one
// aggregate (a unit): 40 bytes, plus its index entry.
type replyEntry struct {
	sum       uint64 // hash of the first reply's payload
	offset    int64  // of the first reply
	partition int32  // of the first reply
	events    int32  // the first reply's events
	replies   uint32 // replies read
	claimed   uint32 // command records that may be answered (atomic): sent to the home partition, pending, or misrouted
	status    uint8  // index of the first reply's status among the enum's symbols
	differ    bool   // a later reply differs from the first
}

// aggCheck verifies one aggregate type.
type aggCheck struct {
	v      *verifier
	agg    *topology.Aggregate
	topics topology.Topics
	n      int32
	name   string // app/type, for progress lines

	committed []int64 // the group's committed offset per commands partition; 0 when none
	spans     map[string]map[int32]span

	replyFP, snapFP uint64
	statuses        []string // the decider.Status symbols, by index
	accepted        uint8

	index   map[uint64]int32 // unit → entries index
	entries []replyEntry

	done         atomic.Int32        // partitions checked
	mu           sync.Mutex          // guards the two below
	pendingUnits map[uint64]struct{} // units with a pending command record in their home partition
	misrouted    []misroutedLost
}

func (c *aggCheck) run(ctx context.Context, adm *kadm.Client, group string) error {
	if err := c.prepare(ctx, adm, group); err != nil {
		return err
	}
	if err := c.readReplies(ctx); err != nil {
		return err
	}
	pending := c.v.rep.Pending
	c.pendingUnits = map[uint64]struct{}{}
	if err := c.checkPartitions(ctx); err != nil {
		return err
	}
	for _, m := range c.misrouted {
		if _, ok := c.pendingUnits[m.k]; !ok && c.v.firstLost(m.k) {
			c.v.violate(classLost, "%s", m.message)
		}
	}
	if pending = c.v.rep.Pending - pending; pending > 0 {
		c.v.note("%d commands of %s are at or after group %s's committed offsets (not yet processed): their replies are not required; verify a drained app", pending, c.topics.Commands, group)
	}
	return c.checkReplies(ctx)
}

// prepare checks the topics, and lists the group's offsets and the topics'
// offsets: the group's first, then the outputs', then the commands': a
// command below the group's offset has its outputs below theirs.
func (c *aggCheck) prepare(ctx context.Context, adm *kadm.Client, group string) error {
	t := c.topics
	details, err := adm.ListTopics(ctx, t.Commands, t.Events, t.Snapshots, t.Replies)
	if err != nil {
		return fmt.Errorf("list topics of %s: %w", c.name, err)
	}
	var errs []error
	for _, name := range []string{t.Commands, t.Events, t.Snapshots, t.Replies} {
		d, ok := details[name]
		switch {
		case !ok || errors.Is(d.Err, kerr.UnknownTopicOrPartition):
			errs = append(errs, fmt.Errorf("%w: %s", topology.ErrMissingTopic, name))
		case d.Err != nil:
			errs = append(errs, fmt.Errorf("topic %s: %w", name, d.Err))
		case name != t.Replies && int32(len(d.Partitions)) != c.n:
			errs = append(errs, &topology.PartitionMismatchError{Topic: name, Want: c.n, Got: int32(len(d.Partitions))})
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}

	c.committed = make([]int64, c.n)
	offs, err := adm.FetchOffsets(kadm.RequireStable(ctx), group)
	switch {
	case errors.Is(err, kerr.GroupIDNotFound):
	case err != nil:
		return fmt.Errorf("fetch offsets of group %s: %w", group, err)
	default:
		for p := range c.n {
			if o, ok := offs.Lookup(t.Commands, p); ok && o.Err == nil && o.At > 0 {
				c.committed[p] = o.At
			}
		}
	}

	c.spans = map[string]map[int32]span{}
	for _, topic := range []string{t.Replies, t.Snapshots, t.Events, t.Commands} {
		spans, err := listSpans(ctx, adm, topic)
		if err != nil {
			return err
		}
		for p, s := range spans {
			if s.start > 0 && topic != t.Snapshots {
				c.v.note("%s/%d starts at offset %d: older records were deleted, the checks lack them", topic, p, s.start)
			}
		}
		c.spans[topic] = spans
	}

	return c.initSchemas()
}

// initSchemas finds what the direct readers of replies and snapshots need:
// the current schemas' fingerprints and the status symbols.
func (c *aggCheck) initSchemas() error {
	reg := c.agg.Schemas()
	fp, ok := reg.Fingerprint(schemas.ReplyName)
	if !ok {
		return errors.New("registry has no decider.Reply")
	}
	c.replyFP = binary.LittleEndian.Uint64(fp)
	fp, ok = reg.Fingerprint(schemas.SnapshotName)
	if !ok {
		return errors.New("registry has no decider.Snapshot")
	}
	c.snapFP = binary.LittleEndian.Uint64(fp)
	s, _ := reg.Schema(schemas.ReplyName)
	if rec, ok := s.(*avro.RecordSchema); ok {
		for _, f := range rec.Fields() {
			if e, ok := f.Type().(*avro.EnumSchema); ok && f.Name() == "status" {
				c.statuses = e.Symbols()
			}
		}
	}
	i := slices.Index(c.statuses, string(schemas.Accepted))
	if i < 0 {
		return errors.New("decider.Reply has no status ACCEPTED")
	}
	c.accepted = uint8(i)
	return nil
}

// unitKey hashes a command id and an aggregate id: the unit replies and
// events are counted by. 64 bits: a collision among a million units has a
// chance of about 3e-8.
func unitKey(h *maphash.Hash, commandID, aggregateID []byte) uint64 {
	h.Reset()
	var n [4]byte
	binary.LittleEndian.PutUint32(n[:], uint32(len(commandID)))
	h.Write(n[:])
	h.Write(commandID)
	h.Write(aggregateID)
	return h.Sum64()
}

// replyFields are the fields of a reply verify uses.
type replyFields struct {
	commandID, aggregateID []byte
	status                 uint8
	events                 int32
}

// parseReply reads a reply: directly when it is written with the current
// decider.Reply schema (no allocation), else through the registry.
func (c *aggCheck) parseReply(v []byte) (replyFields, error) {
	if len(v) >= 10 && v[0] == 0xC3 && v[1] == 0x01 && binary.LittleEndian.Uint64(v[2:10]) == c.replyFP {
		var f replyFields
		b := v[10:]
		var ok bool
		var status, events int64
		if f.commandID, b, ok = avroBytes(b); ok {
			if f.aggregateID, b, ok = avroBytes(b); ok {
				if status, b, ok = avroLong(b); ok {
					if _, b, ok = avroLong(b); ok { // version
						if _, b, ok = avroBytes(b); ok { // reason
							events, b, ok = avroLong(b)
						}
					}
				}
			}
		}
		if ok && len(b) == 0 && status >= 0 && int(status) < len(c.statuses) && events >= 0 && events <= 1<<31-1 {
			f.status, f.events = uint8(status), int32(events)
			return f, nil
		}
	}
	d, err := c.agg.Schemas().Decode(schemas.ReplyName, v)
	if err != nil {
		return replyFields{}, err
	}
	rep := d.(schemas.Reply)
	i := slices.Index(c.statuses, string(rep.Status))
	if i < 0 {
		return replyFields{}, fmt.Errorf("unknown status %q", rep.Status)
	}
	return replyFields{commandID: []byte(rep.CommandID), aggregateID: []byte(rep.AggregateID), status: uint8(i), events: rep.Events}, nil
}

// parseSnapshot reads the fields of a snapshot verify uses: directly when
// it is written with the current decider.Snapshot schema, else through the
// registry. state aliases v.
func (c *aggCheck) parseSnapshot(v []byte) (aggregateID []byte, version int64, state []byte, err error) {
	if len(v) >= 10 && v[0] == 0xC3 && v[1] == 0x01 && binary.LittleEndian.Uint64(v[2:10]) == c.snapFP {
		b := v[10:]
		var ok bool
		if aggregateID, b, ok = avroBytes(b); ok {
			if version, b, ok = avroLong(b); ok {
				if _, b, ok = avroLong(b); ok { // commandOffset
					if state, _, ok = avroBytes(b); ok {
						return aggregateID, version, state, nil
					}
				}
			}
		}
	}
	d, err := c.agg.Schemas().Decode(schemas.SnapshotName, v)
	if err != nil {
		return nil, 0, nil, err
	}
	s := d.(schemas.Snapshot)
	return []byte(s.AggregateID), s.Version, s.State, nil
}

// avroLong reads an Avro int or long (zig-zag varint).
func avroLong(b []byte) (int64, []byte, bool) {
	var u uint64
	for i := 0; i < len(b) && i < 10; i++ {
		u |= uint64(b[i]&0x7f) << (7 * i)
		if b[i] < 0x80 {
			return int64(u>>1) ^ -int64(u&1), b[i+1:], true
		}
	}
	return 0, nil, false
}

// avroBytes reads an Avro string or bytes.
func avroBytes(b []byte) ([]byte, []byte, bool) {
	n, rest, ok := avroLong(b)
	if !ok || n < 0 || n > int64(len(rest)) {
		return nil, nil, false
	}
	return rest[:n], rest[n:], true
}

// readReplies reads the replies topic into the index.
func (c *aggCheck) readReplies(ctx context.Context) error {
	c.index = map[uint64]int32{}
	var h maphash.Hash
	h.SetSeed(c.v.seed)
	var n int64
	start := time.Now()
	err := c.v.read(ctx, map[string]map[int32]span{c.topics.Replies: c.spans[c.topics.Replies]}, func(r *kgo.Record) {
		if n++; n%c.v.cfg.every == 0 {
			c.v.progressf("verify %s: %d replies read (%.1fs)", c.name, n, time.Since(start).Seconds())
		}
		f, err := c.parseReply(r.Value)
		if err != nil {
			c.v.violate(classUndecodable, "reply at %s/%d@%d: %v", r.Topic, r.Partition, r.Offset, err)
			return
		}
		k := unitKey(&h, f.commandID, f.aggregateID)
		sum := maphash.Bytes(c.v.seed, r.Value)
		if i, ok := c.index[k]; ok {
			e := &c.entries[i]
			e.replies++
			e.differ = e.differ || e.sum != sum
			return
		}
		if len(c.entries) >= 1<<31-1 {
			return // beyond any topic verify can hold
		}
		c.index[k] = int32(len(c.entries))
		c.entries = append(c.entries, replyEntry{
			sum: sum, offset: r.Offset, partition: r.Partition, events: f.events, replies: 1, status: f.status,
		})
	})
	c.v.mu.Lock()
	c.v.rep.Replies += n
	c.v.mu.Unlock()
	c.v.progressf("verify %s: %d replies to %d command ids read from %s (%.1fs)", c.name, n, len(c.entries), c.topics.Replies, time.Since(start).Seconds())
	return err
}

// entry returns the replies to unit k, or nil. Safe for concurrent use once
// the replies are read.
func (c *aggCheck) entry(k uint64) *replyEntry {
	if i, ok := c.index[k]; ok {
		return &c.entries[i]
	}
	return nil
}

// checkPartitions checks the partitions, cfg.parallel at once.
func (c *aggCheck) checkPartitions(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	next := make(chan int32)
	errc := make(chan error, c.v.cfg.parallel)
	var wg sync.WaitGroup
	for range max(c.v.cfg.parallel, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range next {
				if err := c.checkPartition(ctx, p); err != nil {
					errc <- err
					cancel()
					return
				}
			}
		}()
	}
feed:
	for p := range c.n {
		select {
		case next <- p:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return ctx.Err()
	}
}

// partCheck is the state of one partition's check: what its memory bound
// is about.
type partCheck struct {
	c *aggCheck
	p int32
	h maphash.Hash

	arena []byte           // command and aggregate ids of the units
	index map[uint64]int32 // unit → units index
	units []unitTrack
	aggs  map[string]*aggTrack
	types map[string]string // interned event type names

	commands, misrouted, pending, noReply, elsewhere, events, snapshots int64
}

// unitTrack is one command id of one aggregate of the partition.
type unitTrack struct {
	at, idLen, aggLen int32  // its ids in the arena
	need              uint32 // non-pending command records that need a reply
	pending           uint32 // pending command records that may have one
	events            uint32 // events naming it in ce_causationid
	command           int64  // offset of its first command record; -1: none
	event             int64  // offset of its first event; -1: none
}

// aggTrack is one aggregate of the partition: the fold of its events and
// its latest snapshot.
type aggTrack struct {
	state   any
	events  int64 // events read
	version int64 // the last event's version header
	broken  bool  // an event did not decode or evolve: the fold is unknown

	snap        bool   // a snapshot was read (and no tombstone after it)
	snapOffset  int64  // of the latest snapshot
	snapVersion int64  // its version
	snapState   []byte // its encoded state
	snapErr     error  // why it does not decode
	snapID      string // its aggregateId when it is not the key
}

func (c *aggCheck) checkPartition(ctx context.Context, p int32) error {
	start := time.Now()
	pc := &partCheck{c: c, p: p, index: map[uint64]int32{}, aggs: map[string]*aggTrack{}, types: map[string]string{}}
	pc.h.SetSeed(c.v.seed)
	t := c.topics
	spans := map[string]map[int32]span{}
	for _, topic := range []string{t.Commands, t.Events, t.Snapshots} {
		spans[topic] = map[int32]span{p: c.spans[topic][p]}
	}
	var n int64
	err := c.v.read(ctx, spans, func(r *kgo.Record) {
		if n++; n%c.v.cfg.every == 0 {
			c.v.progressf("verify %s partition %d: %d records read (%.1fs)", c.name, p, n, time.Since(start).Seconds())
		}
		switch r.Topic {
		case t.Commands:
			pc.command(r)
		case t.Events:
			pc.event(r)
		case t.Snapshots:
			pc.snapshot(r)
		}
	})
	if err != nil {
		return err
	}
	pc.verdict()
	v := c.v
	v.mu.Lock()
	rep := &v.rep
	rep.Commands += pc.commands
	rep.Misrouted += pc.misrouted
	rep.Pending += pc.pending
	rep.NoReply += pc.noReply
	rep.ReplyElsewhere += pc.elsewhere
	rep.Events += pc.events
	rep.Snapshots += pc.snapshots
	rep.Aggregates += int64(len(pc.aggs))
	v.mu.Unlock()
	v.progressf("verify %s partition %d: %d commands, %d events, %d snapshots, %d aggregates (%.1fs; %d/%d partitions done)",
		c.name, p, pc.commands, pc.events, pc.snapshots, len(pc.aggs), time.Since(start).Seconds(), c.done.Add(1), c.n)
	return nil
}

// unit returns unit k of the partition, adding it with its ids.
func (pc *partCheck) unit(k uint64, commandID, aggregateID []byte) *unitTrack {
	if i, ok := pc.index[k]; ok {
		return &pc.units[i]
	}
	pc.index[k] = int32(len(pc.units))
	at := int32(len(pc.arena))
	pc.arena = append(append(pc.arena, commandID...), aggregateID...)
	pc.units = append(pc.units, unitTrack{at: at, idLen: int32(len(commandID)), aggLen: int32(len(aggregateID)), command: -1, event: -1})
	return &pc.units[len(pc.units)-1]
}

func (pc *partCheck) ids(u *unitTrack) (commandID, aggregateID string) {
	b := pc.arena[u.at:]
	return string(b[:u.idLen]), string(b[u.idLen : u.idLen+u.aggLen])
}

// track returns the aggregate with id key, adding it.
func (pc *partCheck) track(key []byte) *aggTrack {
	if a, ok := pc.aggs[string(key)]; ok {
		return a
	}
	a := &aggTrack{state: pc.c.agg.Initial()}
	pc.aggs[string(key)] = a
	return a
}

func (pc *partCheck) command(r *kgo.Record) {
	c := pc.c
	pc.commands++
	var id, replyTo []byte
	for i := range r.Headers {
		switch h := &r.Headers[i]; h.Key {
		case schemas.HeaderID:
			id = h.Value
		case schemas.HeaderReplyTo:
			replyTo = h.Value
		}
	}
	pending := r.Offset >= c.committed[pc.p]
	if pending {
		pc.pending++
	}
	misrouted := topology.Partition(r.Key, c.n) != pc.p
	if misrouted {
		pc.misrouted++
	}
	expect := false
	switch {
	case len(id) == 0 || len(replyTo) == 0:
		pc.noReply++
	case string(replyTo) != c.topics.Replies:
		pc.elsewhere++
	default:
		expect = true
	}
	if len(id) == 0 {
		return // refused without a reply, decided never
	}
	k := unitKey(&pc.h, id, r.Key)
	if misrouted {
		// Forwarded to its home partition, where the copy is checked; or,
		// when its headers are bad, answered INVALID from here.
		if !expect {
			return
		}
		if e := c.entry(k); e != nil {
			atomic.AddUint32(&e.claimed, 1)
		} else if !pending {
			m := fmt.Sprintf("command %s to %s %q (%s/%d@%d, misrouted): no reply, from here or from the partition it hashes to",
				id, c.agg.Name(), r.Key, r.Topic, r.Partition, r.Offset)
			c.mu.Lock()
			c.misrouted = append(c.misrouted, misroutedLost{k, m})
			c.mu.Unlock()
		}
		return
	}
	u := pc.unit(k, id, r.Key)
	if u.command < 0 {
		u.command = r.Offset
	}
	switch {
	case !expect:
	case pending:
		u.pending++
	default:
		u.need++
	}
}

func (pc *partCheck) event(r *kgo.Record) {
	c := pc.c
	pc.events++
	var version, cause, typ []byte
	for i := range r.Headers {
		switch h := &r.Headers[i]; h.Key {
		case schemas.HeaderAggregateVersion:
			version = h.Value
		case schemas.HeaderCausationID:
			cause = h.Value
		case schemas.HeaderType:
			typ = h.Value
		}
	}
	if home := topology.Partition(r.Key, c.n); home != pc.p {
		c.v.violate(classPartition, "event of %s %q (version %s, %s/%d@%d) belongs in partition %d",
			c.agg.Name(), r.Key, version, r.Topic, r.Partition, r.Offset, home)
		return
	}
	a := pc.track(r.Key)
	a.events++
	v, ok := parseVersion(version)
	switch {
	case !ok:
		c.v.violate(classVersion, "event of %s %q (%s/%d@%d): %s %q is not a version", c.agg.Name(), r.Key, r.Topic, r.Partition, r.Offset, schemas.HeaderAggregateVersion, version)
	case v > a.version+1:
		c.v.violate(classVersion, "event of %s %q (%s/%d@%d): version %d after %d, versions %d..%d are missing", c.agg.Name(), r.Key, r.Topic, r.Partition, r.Offset, v, a.version, a.version+1, v-1)
	case v <= a.version:
		c.v.violate(classVersion, "event of %s %q (%s/%d@%d): version %d after %d, a repeat or a step back", c.agg.Name(), r.Key, r.Topic, r.Partition, r.Offset, v, a.version)
	}
	if ok {
		a.version = v
	}
	if err := pc.fold(a, typ, r.Value); err != nil {
		c.v.violate(classUndecodable, "event of %s %q (version %s, %s/%d@%d): %v", c.agg.Name(), r.Key, version, r.Topic, r.Partition, r.Offset, err)
		a.broken = true
	}
	if len(cause) == 0 {
		c.v.violate(classCausation, "event of %s %q (version %s, %s/%d@%d) has no %s", c.agg.Name(), r.Key, version, r.Topic, r.Partition, r.Offset, schemas.HeaderCausationID)
		return
	}
	u := pc.unit(unitKey(&pc.h, cause, r.Key), cause, r.Key)
	u.events++
	if u.event < 0 {
		u.event = r.Offset
	}
}

// fold decodes an event and, while the fold is sound, applies it. A panic
// in the domain's Evolve is an error.
func (pc *partCheck) fold(a *aggTrack, typ, payload []byte) error {
	name, ok := pc.types[string(typ)]
	if !ok {
		name = string(typ)
		if len(pc.types) < 1024 {
			pc.types[name] = name
		}
	}
	agg := pc.c.agg
	ev, err := agg.DecodeEvent(name, payload)
	if err != nil || a.broken {
		return err
	}
	a.state, err = evolve(agg, a.state, ev)
	return err
}

// parseVersion reads a version header: a decimal integer >= 1.
func parseVersion(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var v int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int64(c-'0')
	}
	return v, v >= 1
}

func (pc *partCheck) snapshot(r *kgo.Record) {
	c := pc.c
	pc.snapshots++
	if home := topology.Partition(r.Key, c.n); home != pc.p {
		c.v.violate(classPartition, "snapshot of %s %q (%s/%d@%d) belongs in partition %d", c.agg.Name(), r.Key, r.Topic, r.Partition, r.Offset, home)
		return
	}
	a := pc.track(r.Key)
	a.snap, a.snapOffset, a.snapErr, a.snapID = r.Value != nil, r.Offset, nil, ""
	if r.Value == nil {
		return // a tombstone deletes the aggregate's snapshot
	}
	id, version, state, err := c.parseSnapshot(r.Value)
	if err != nil {
		a.snapErr = err
		return
	}
	if string(id) != string(r.Key) {
		a.snapID = string(id)
	}
	a.snapVersion = version
	a.snapState = append(a.snapState[:0], state...)
}

// verdict checks the partition's units and aggregates once all of it is
// read.
func (pc *partCheck) verdict() {
	c := pc.c
	v := c.v
	name := c.agg.Name()
	for k, i := range pc.index {
		u := &pc.units[i]
		e := c.entry(k)
		if e != nil {
			atomic.AddUint32(&e.claimed, u.need+u.pending)
		}
		if u.pending > 0 {
			c.mu.Lock()
			c.pendingUnits[k] = struct{}{}
			c.mu.Unlock()
		}
		switch {
		case u.need == 0:
		case e == nil:
			if v.firstLost(k) {
				id, agg := pc.ids(u)
				v.violate(classLost, "command %s to %s %q (first at %s/%d@%d): no reply to its %d send(s)", id, name, agg, c.topics.Commands, pc.p, u.command, u.need)
			}
		case e.replies < u.need:
			id, agg := pc.ids(u)
			v.violate(classLost, "command %s to %s %q (first at %s/%d@%d): %d replies to %d sends", id, name, agg, c.topics.Commands, pc.p, u.command, e.replies, u.need)
		}
		switch {
		case u.command < 0:
			id, agg := pc.ids(u)
			v.violate(classCausation, "%d event(s) of %s %q (first at %s/%d@%d) name %s %s, which is no command of that aggregate",
				u.events, name, agg, c.topics.Events, pc.p, u.event, schemas.HeaderCausationID, id)
		case e == nil:
			// No reply (none asked for, pending, or lost): the count is unknown.
		case e.status == c.accepted && int64(u.events) != int64(e.events):
			id, agg := pc.ids(u)
			v.violate(classEvents, "command %s to %s %q: its reply is ACCEPTED with %d event(s), %s has %d", id, name, agg, e.events, c.topics.Events, u.events)
		case e.status != c.accepted && u.events > 0:
			id, agg := pc.ids(u)
			v.violate(classEvents, "command %s to %s %q: its reply is %s, yet %s has %d event(s) of it", id, name, agg, c.statuses[e.status], c.topics.Events, u.events)
		}
	}
	for id, a := range pc.aggs {
		switch {
		case !a.snap && a.events > 0:
			v.violate(classSnapshot, "%s %q has %d event(s) and no snapshot", name, id, a.events)
		case !a.snap:
		case a.snapErr != nil:
			v.violate(classUndecodable, "latest snapshot of %s %q (%s/%d@%d): %v", name, id, c.topics.Snapshots, pc.p, a.snapOffset, a.snapErr)
		case a.snapID != "":
			v.violate(classSnapshot, "latest snapshot of %s %q (%s/%d@%d) names aggregate %q", name, id, c.topics.Snapshots, pc.p, a.snapOffset, a.snapID)
		case a.snapVersion != a.events:
			v.violate(classSnapshot, "latest snapshot of %s %q (%s/%d@%d) is at version %d, the aggregate has %d event(s)", name, id, c.topics.Snapshots, pc.p, a.snapOffset, a.snapVersion, a.events)
		case a.broken:
			// The fold is unknown; the undecodable event is reported.
		default:
			state, same, err := c.sameState(a.snapState, a.state)
			switch {
			case err != nil:
				v.violate(classUndecodable, "state in the latest snapshot of %s %q (%s/%d@%d): %v", name, id, c.topics.Snapshots, pc.p, a.snapOffset, err)
			case !same:
				v.violate(classSnapshot, "latest snapshot of %s %q (%s/%d@%d, version %d) holds %+v, the fold of its events is %+v", name, id, c.topics.Snapshots, pc.p, a.snapOffset, a.snapVersion, state, a.state)
			}
		}
	}
}

// sameState reports whether an encoded snapshot state is the folded state:
// the same bytes as its encoding (the worker's own, the usual case), or the
// same value once decoded — directly, or after the fold's encoding is
// decoded too (an empty slice and nil, map order in the bytes). It returns
// the decoded snapshot state when it had to decode it.
func (c *aggCheck) sameState(snap []byte, fold any) (state any, same bool, err error) {
	enc, encErr := c.agg.EncodeState(fold)
	if encErr == nil && bytes.Equal(enc, snap) {
		return nil, true, nil
	}
	if state, err = c.agg.DecodeState(snap); err != nil {
		return nil, false, err
	}
	if reflect.DeepEqual(state, fold) {
		return state, true, nil
	}
	if encErr == nil {
		if round, err := c.agg.DecodeState(enc); err == nil && reflect.DeepEqual(state, round) {
			return state, true, nil
		}
	}
	return state, false, nil
}

// checkReplies finds, once every partition is checked, the replies that
// answer more sends than there were (duplicated), no command (orphan), or
// differ; it reads the first reply of each described one again for its ids.
func (c *aggCheck) checkReplies(ctx context.Context) error {
	type found struct {
		class violationClass
		e     *replyEntry
	}
	var described []found
	var counts [numViolationClasses]int64
	add := func(class violationClass, e *replyEntry) {
		if counts[class]++; counts[class] <= int64(c.v.cfg.examples) {
			described = append(described, found{class, e})
		}
	}
	for i := range c.entries {
		e := &c.entries[i]
		switch {
		case e.claimed == 0:
			add(classOrphan, e)
		case e.replies > e.claimed:
			add(classDuplicated, e)
		}
		if e.differ && e.claimed > 0 {
			add(classConflicting, e)
		}
	}
	c.v.mu.Lock()
	for class, n := range counts {
		c.v.rep.Violations[class].Count += n - min(n, int64(c.v.cfg.examples))
	}
	c.v.mu.Unlock()
	if len(described) == 0 {
		return nil
	}
	want := map[topicPartition]map[int64]*replyFields{}
	spans := map[int32]span{}
	for _, f := range described {
		tp := topicPartition{c.topics.Replies, f.e.partition}
		if want[tp] == nil {
			want[tp] = map[int64]*replyFields{}
			spans[f.e.partition] = span{start: f.e.offset, end: f.e.offset + 1}
		}
		want[tp][f.e.offset] = nil
		s := spans[f.e.partition]
		spans[f.e.partition] = span{start: min(s.start, f.e.offset), end: max(s.end, f.e.offset+1)}
	}
	err := c.v.read(ctx, map[string]map[int32]span{c.topics.Replies: spans}, func(r *kgo.Record) {
		m := want[topicPartition{r.Topic, r.Partition}]
		if _, ok := m[r.Offset]; !ok {
			return
		}
		if f, err := c.parseReply(r.Value); err == nil {
			f.commandID, f.aggregateID = slices.Clone(f.commandID), slices.Clone(f.aggregateID)
			m[r.Offset] = &f
		}
	})
	if err != nil {
		return err
	}
	for _, f := range described {
		e := f.e
		what := fmt.Sprintf("reply at %s/%d@%d", c.topics.Replies, e.partition, e.offset)
		if r := want[topicPartition{c.topics.Replies, e.partition}][e.offset]; r != nil {
			what = fmt.Sprintf("command %s to %s %q (first reply at %s/%d@%d)", r.commandID, c.agg.Name(), r.aggregateID, c.topics.Replies, e.partition, e.offset)
		}
		switch f.class {
		case classOrphan:
			c.v.violate(classOrphan, "%s: %d reply(ies) to no command in %s", what, e.replies, c.topics.Commands)
		case classDuplicated:
			c.v.violate(classDuplicated, "%s: %d replies to %d send(s)", what, e.replies, e.claimed)
		case classConflicting:
			c.v.violate(classConflicting, "%s: its %d replies differ", what, e.replies)
		}
	}
	return nil
}
