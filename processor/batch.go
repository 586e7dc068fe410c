package processor

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/deciderhq/decider/schemas"
	"github.com/deciderhq/decider/statestore"
	"github.com/deciderhq/decider/topology"
	"github.com/twmb/franz-go/pkg/kgo"
)

// batch is one transaction's work: the commands of one poll, partition by
// partition, and what they produced.
//
// A batch is decided while the transaction of the batch before it ends
// (see the package doc): its outputs wait in its arenas until its own
// transaction begins, and it reads the aggregates the batch before it
// changed from that batch's overlays. If that transaction does not commit,
// the batch is dropped unproduced and its commands are polled again.
type batch struct {
	w        *Worker
	fetches  kgo.Fetches
	prev     map[*assigned][]*partBatch // the previous batch's shares of each partition, while this one is decided; nil for none
	produced sync.WaitGroup             // records whose promise has not run yet
	promise  func(*kgo.Record, error)   // b.written, made once

	mu        sync.Mutex
	err       error  // the first reason the transaction must abort
	abortKind string // its class, the label of decider_transaction_aborts_total
	parts     []*partBatch

	// The end of the batch's transaction, in the background.
	pollCtx   context.Context    // of the polls made during the flush; cancelled once the records are flushed
	stopPoll  context.CancelFunc // cancels pollCtx
	endingCtx context.Context    // of the polls made after the flush; cancelled once the transaction's outcome is known
	ended     context.CancelFunc // cancels endingCtx
	done      chan struct{}      // closed when the transaction ended
	committed bool               // set before done: the transaction committed
	endErr    error              // set before done: an error that ends the session
}

func newBatch(w *Worker, fetches kgo.Fetches, prev *batch) *batch {
	b := &batch{w: w, fetches: fetches}
	b.promise = b.written
	if prev != nil {
		b.prev = sharesOf(prev.parts)
	}
	return b
}

// sharesOf returns parts by partition assignment.
func sharesOf(parts []*partBatch) map[*assigned][]*partBatch {
	m := make(map[*assigned][]*partBatch, len(parts))
	for _, pb := range parts {
		m[pb.a] = append(m[pb.a], pb)
	}
	return m
}

// Classes of reasons to abort a batch.
const (
	abortRevoked       = "revoked"        // a partition of the batch was revoked or the worker is stopping
	abortProduceFailed = "produce_failed" // a record of the batch was not written
	abortBatchFailed   = "batch_failed"   // deciding failed for a reason not the command's (a state store read)
)

func (b *batch) abort(kind string, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == nil {
		b.err, b.abortKind = err, kind
	}
}

// abortReason returns the class of the reason the transaction must abort,
// and the reason; a nil error if it may commit.
func (b *batch) abortReason() (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.abortKind, b.err
}

// run decides a share of the records of one partition (all of them, or
// those of some of its aggregates, see shares), in offset order, once the
// partition is restored. next is the partition's checkpoint, which all its
// shares move on.
func (b *batch) run(ctx context.Context, ftp kgo.FetchTopicPartition, next *atomic.Int64) {
	a, ok := b.w.partition(ftp.Topic, ftp.Partition)
	if !ok {
		b.abort(abortRevoked, fmt.Errorf("%s/%d is no longer assigned", ftp.Topic, ftp.Partition))
		return
	}
	select {
	case <-a.ready:
	case <-a.ctx.Done():
		b.abort(abortRevoked, fmt.Errorf("%s/%d revoked while restoring", ftp.Topic, ftp.Partition))
		return
	case <-ctx.Done():
		b.abort(abortRevoked, fmt.Errorf("%s/%d: stopped while restoring: %w", ftp.Topic, ftp.Partition, ctx.Err()))
		return
	}
	pb := &partBatch{b: b, a: a, overlay: statestore.NewOverlay(a.agg.Name(), a.key.partition, len(ftp.Records)), ar: b.w.arenas.get(), prev: b.prev[a], next: next}
	pb.snapshotPromise, pb.began = pb.snapshotWritten, time.Now()
	pb.tally.init(len(ftp.Records))
	defer func() { pb.prev = nil }() // its arenas are reused once its transaction ended
	b.mu.Lock()
	b.parts = append(b.parts, pb)
	b.mu.Unlock()
	for _, r := range ftp.Records {
		if err := pb.handle(ctx, r); err != nil {
			b.abort(abortBatchFailed, err)
			return
		}
	}
	if err := pb.writeSnapshots(); err != nil {
		b.abort(abortBatchFailed, err)
	}
}

// apply puts the committed overlays in the state cache, which writes them
// to the store later (see checkpoints), and writes to the store what the
// cache does not hold or lets go of meanwhile. A partition that was revoked
// (and maybe reassigned) since the batch began is skipped: its next restore
// reads these committed snapshots from the changelog.
func (b *batch) apply() error {
	w := b.w
	s := w.newStoreWrite(0)
	defer s.close()
	var current []*partBatch
	var written []*assigned
	for _, pb := range b.parts {
		if pb.overlay.Len() > 0 && s.own(pb.a) {
			current = append(current, pb)
		}
	}
	put := 0
	for _, pb := range current { // before any write: the filter never lacks an id the store holds
		pb.overlay.Each(func(id string, e statestore.Entry) {
			if s, ok := e.Decoded.(*aggState); !ok || s.fresh {
				pb.a.ids.add(id)
			}
		})
	}
	for _, pb := range current {
		pb.overlay.Each(func(id string, e statestore.Entry) {
			put += len(e.Value)
			w.cache.put(pb.a, id, e.Value)
		})
		if next := pb.next.Load(); next > pb.a.committed {
			pb.a.committed = next
		}
		if !slices.Contains(written, pb.a) {
			written = append(written, pb.a)
		}
	}
	if len(current) == 0 {
		return nil
	}
	w.checkpoints.sweep(s, put, written)
	return s.commit()
}

// release gives the batch's arenas back for the next batches. Call it
// once every record's promise has run and the overlays are written or
// dropped, or on a batch never produced; nil is a batch of nothing.
func (b *batch) release() {
	if b == nil {
		return
	}
	for _, pb := range b.parts {
		b.w.arenas.put(pb.ar)
		pb.ar = nil
	}
}

// tallyCommitted adds what the committed batch did to the metrics.
func (b *batch) tallyCommitted(commands int) {
	m, now := b.w.metrics, time.Now()
	m.batchCommands.Observe(float64(commands))
	var done []string // the aggregate types tallied: a worker has few
	for i, pb := range b.parts {
		typ := pb.a.agg.Name()
		if slices.Contains(done, typ) {
			continue
		}
		done = append(done, typ)
		m.committed(typ, func(yield func(*tally) bool) {
			for _, q := range b.parts[i:] {
				if q.a.agg.Name() == typ && !yield(&q.tally) {
					return
				}
			}
		}, now)
	}
}

// restoreAgain makes every partition of the batch restore before its next
// command.
func (b *batch) restoreAgain() {
	for _, pb := range b.parts {
		b.w.reassign(pb.a)
	}
}

// produce sends the batch's records in its transaction, partition by
// partition, each partition's in the order they were decided.
func (b *batch) produce() {
	for _, pb := range b.parts {
		for _, o := range pb.ar.outs {
			b.produced.Add(1)
			b.w.sess.Client().Produce(context.Background(), o.r, o.promise)
		}
	}
}

// written is the promise of a record the batch needs nothing of once
// written. (It and snapshotWritten are method values made once per batch:
// a closure per record was two allocations for every command.)
func (b *batch) written(r *kgo.Record, err error) {
	b.acknowledged(r, err)
	b.produced.Done()
}

// acknowledged handles the outcome of producing r: a failed record aborts
// the transaction. It reports whether r was written.
func (b *batch) acknowledged(r *kgo.Record, err error) bool {
	if err != nil {
		b.w.topics.forget(r.Topic) // a reply topic deleted since it was looked up
		b.abort(abortProduceFailed, fmt.Errorf("produce to %s/%d: %w", r.Topic, r.Partition, err))
		return false
	}
	return true
}

// partBatch is one partition's share of a batch.
type partBatch struct {
	b       *batch
	a       *assigned
	overlay *statestore.Overlay
	next    *atomic.Int64 // changelog offset after the batch's last snapshot of the partition, shared by its shares
	tally   tally         // for the metrics, once committed
	bodies  [][]byte      // scratch: the encoded dedupe window of the snapshot being written, in pieces
	ar      *arena        // the records and bytes produced
	cmd     command       // the command being handled
	prev    []*partBatch  // the partition's shares of the previous batch, if its transaction was ending when this one began (and of this batch's earlier commands, when it is followed or topped up), in the order they were decided

	// The reply topic last looked up, and its partitions: nearly every
	// command of a share names the same, and the worker's cache of
	// topics takes a lock and reads the clock.
	replyTopic      string
	replyPartitions int32
	decided         int // commands decided, for sampling decide_duration_seconds

	snapshotPromise func(*kgo.Record, error) // pb.snapshotWritten, made once
	began           time.Time                // the timestamp of the records produced
}

// produce adds a record of kind to what the batch's transaction sends;
// promise (pb.b.promise, or pb.snapshotPromise) runs once r is
// acknowledged or failed.
func (pb *partBatch) produce(kind string, r *kgo.Record, promise func(*kgo.Record, error)) {
	pb.tally.record(kind)
	pb.out(r, promise)
}

// out adds r to what the batch's transaction sends.
func (pb *partBatch) out(r *kgo.Record, promise func(*kgo.Record, error)) {
	pb.ar.outs = append(pb.ar.outs, output{r, promise})
}

// record returns a record of the batch's arena stamped with the time the
// partition's share of the batch began (franz-go would call time.Now for
// each record it is given without one).
func (pb *partBatch) record() *kgo.Record {
	r := pb.ar.record()
	r.Timestamp = pb.began
	return r
}

// snapshotWritten is the promise of a snapshot record: the changelog
// offset after it moves the partition's checkpoint on.
func (pb *partBatch) snapshotWritten(r *kgo.Record, err error) {
	defer pb.b.produced.Done() // after next moved: apply reads it once every record is done
	if !pb.b.acknowledged(r, err) {
		return
	}
	for {
		cur := pb.next.Load()
		if r.Offset+1 <= cur || pb.next.CompareAndSwap(cur, r.Offset+1) {
			return
		}
	}
}

// aggState is an aggregate as the worker holds it between commands.
//
// An aggState is never modified once made: the overlay and the next
// command share it.
type aggState struct {
	state         any
	stateBytes    []byte // state, encoded; nil until needed for the initial state
	version       int64
	commandOffset int64   // offset of the last command applied; -1 for none
	recent        *recent // the dedupe window
	// fresh: no snapshot of the aggregate was found (in the cache, the
	// store or a batch before), so that its id is not in the partition's
	// filter yet. An id that was found is (see idFilter), and apply skips
	// adding it again: four random reads of the filter per snapshot.
	fresh bool
}

// load returns an aggregate's state: the overlay's, else the previous
// batch's, else the cache's, else the store's, else the initial state.
func (pb *partBatch) load(id string) (*aggState, error) {
	if e, ok := pb.overlay.Get(id); ok {
		return e.Decoded.(*aggState), nil
	}
	w := pb.b.w
	agg := pb.a.agg
	// The newest first: a batch decided in pieces during and after the
	// end before it (Worker.follow, Worker.topUp) can hold an aggregate in
	// two of a partition's shares, the later one newer.
	for _, prev := range slices.Backward(pb.prev) {
		if e, ok := prev.overlay.Get(id); ok {
			// Decoded again from a copy: the previous batch's arenas,
			// which its state points into, are reused before this
			// batch's overlay is done with.
			return decodeSnapshot(agg, append(pb.ar.buf(len(e.Value)), e.Value...), true)
		}
	}
	if v, ok := w.cache.get(pb.a, id, pb.ar.buf); ok {
		w.metrics.cacheHits.Inc()
		return decodeSnapshot(agg, v, true) // the cache holds only what this worker wrote
	}
	w.metrics.cacheMisses.Inc()
	if pb.a.ids.absent(id) {
		return &aggState{state: agg.Initial(), commandOffset: -1, fresh: true}, nil
	}
	v, err := w.cfg.Store.Get(agg.Name(), pb.a.key.partition, id)
	if errors.Is(err, statestore.ErrNotFound) {
		return &aggState{state: agg.Initial(), commandOffset: -1, fresh: true}, nil
	}
	if err != nil {
		return nil, err
	}
	return decodeSnapshot(agg, v, false)
}

// decodeSnapshot decodes a snapshot; own says that this worker wrote v
// (schemas.Registry.ReadOwnSnapshot), else v is checked whole.
func decodeSnapshot(agg *topology.Aggregate, v []byte, own bool) (*aggState, error) {
	read := agg.Schemas().ReadSnapshot
	if own {
		read = agg.Schemas().ReadOwnSnapshot
	}
	snap, replies, bodies, err := read(v)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	state, err := agg.DecodeState(snap.State)
	if err != nil {
		return nil, fmt.Errorf("snapshot state: %w", err)
	}
	return &aggState{state: state, stateBytes: snap.State, version: snap.Version, commandOffset: snap.CommandOffset, recent: recentOf(replies, bodies)}, nil
}

// handle decides one command and produces its outputs. An error aborts the
// transaction; everything a bad command can cause is answered instead.
func (pb *partBatch) handle(ctx context.Context, r *kgo.Record) error {
	w := pb.b.w
	agg := pb.a.agg
	c := &pb.cmd
	if err := parseCommand(c, r, w.cfg.MaxPayloadBytes); err != nil {
		return pb.refuse(ctx, c, schemas.Invalid, err)
	}
	if want := topology.Partition(r.Key, agg.Partitions()); want != r.Partition {
		pb.forward(r, want)
		return nil
	}
	id := string(r.Key)
	st, err := pb.load(id)
	if err != nil {
		return fmt.Errorf("load %s/%d/%s: %w", agg.Name(), r.Partition, id, err)
	}
	if r.Offset <= st.commandOffset {
		w.log.Debug("command already applied", "id", c.id, "offset", r.Offset, "applied_through", st.commandOffset)
		return nil
	}
	if body, ok := st.recent.find(c.id, w.cfg.DedupeWindow); ok {
		prev, err := schemas.ReadReply(body)
		if err != nil { // its snapshot was read whole, or it was encoded here
			return fmt.Errorf("dedupe window of %s/%d/%s: %w", agg.Name(), r.Partition, id, err)
		}
		prev.AggregateID = id // the window's copy leaves it out (see below)
		w.log.Debug("duplicate command", "id", c.id, "aggregate", id)
		pb.tally.dedupeHits++
		pb.tally.command(prev.Status, r.Timestamp)
		if err := pb.reply(ctx, c, prev); err != nil {
			return err
		}
		// The snapshot moves on to this offset too, so that a replay of
		// the duplicate (after the group's offsets went back) is skipped
		// like any applied command instead of answered again.
		again := *st
		again.commandOffset = r.Offset
		pb.stage(id, &again)
		return nil
	}
	cmd, err := agg.DecodeCommand(c.typ, r.Value)
	if err != nil {
		return pb.refuse(ctx, c, schemas.Invalid, decodeError(err))
	}
	reply := schemas.Reply{CommandID: c.id, AggregateID: id, Version: st.version}
	next := &aggState{state: st.state, stateBytes: st.stateBytes, version: st.version, commandOffset: r.Offset, fresh: st.fresh}
	var d decision
	switch {
	case !c.deadline.IsZero() && time.Now().After(c.deadline):
		reply.Status, reply.Reason = schemas.Expired, "deadline_passed"
	case c.expectedVersion >= 0 && c.expectedVersion != st.version:
		reply.Status, reply.Reason = schemas.Conflict, "version_mismatch"
	default:
		var began time.Time
		timed := pb.decided%decideSample == 0
		if timed {
			began = time.Now()
		}
		d = decide(agg, st.state, cmd, w.cfg.MaxRecordBytes)
		if timed {
			pb.a.decideTime.Observe(time.Since(began).Seconds())
		}
		pb.decided++
		// AsType, not As, whose reflection took 72 against 3 ns a
		// refused command (warm; far more between commands at 1k/s).
		rejection, refused := errors.AsType[topology.Rejection](d.err)
		switch {
		case refused:
			reply.Status, reply.Reason = schemas.Rejected, string(rejection)
		case d.err != nil:
			reply.Status, reply.Reason = schemas.Failed, d.reason
			pb.deadLetter(r, reply.Reason, d.err.Error())
		default:
			reply.Status = schemas.Accepted
			next.state, next.stateBytes = d.state, d.stateBytes
			next.version += int64(len(d.events))
			reply.Version, reply.Events = next.version, int32(len(d.events))
			for i, e := range d.events {
				pb.produce(kindEvent, pb.event(c, st.version+int64(i)+1, e), pb.b.promise)
			}
		}
	}
	// Every decided command updates the snapshot, even one that changed
	// nothing on an aggregate with no events: its offset and reply are what
	// make a replay or a retry of it answer the same, never decide again.
	pb.tally.command(reply.Status, r.Timestamp)
	v, err := pb.encodeReply(c, reply)
	if err != nil {
		return err
	}
	// The window keeps the reply without its aggregate id, which its
	// snapshot holds once: with ids like the example's, the ids were a
	// quarter of a full window's bytes (with UUIDs for command and aggregate
	// ids, almost half), in every snapshot written, cached, stored and
	// restored. A duplicate gets it back from its command.
	next.recent = st.recent.add(schemas.AppendWindowReply(pb.ar.buf(len(v)), v), w.cfg.DedupeWindow)
	pb.stage(id, next)
	return pb.sendReply(ctx, c, reply, v)
}

// decideSample: one command in decideSample of each share is timed for
// decide_duration_seconds (its first, then every decideSample-th). Timing
// every one, its two clock reads and the observation were 1.9% of the
// worker's CPU flat out.
const decideSample = 8

// snapshotOverhead bounds what a snapshot record adds to its state: the
// envelope and a full dedupe window of replies.
const snapshotOverhead = 64 << 10

// snapshotEnvelope is room enough for a snapshot's framing, its six
// varints and the end of its array, beyond its id, state and replies.
const snapshotEnvelope = schemas.FramingSize + 6*binary.MaxVarintLen64 + 1

// decision is what Decide, Evolve and the encoders made of one command.
type decision struct {
	events     []encoded
	state      any
	stateBytes []byte
	err        error  // a Rejection, or an unexpected error or panic
	reason     string // FAILED reason when err is not a Rejection
}

type encoded struct {
	name    string
	payload []byte
}

// decide runs the domain code on one command. A panic anywhere in it is
// caught and becomes a FAILED decision, never a crashed worker.
func decide(agg *topology.Aggregate, state, cmd any, maxRecord int) (d decision) {
	defer func() {
		if p := recover(); p != nil {
			d = decision{err: fmt.Errorf("panic: %v", p), reason: "handler_panic"}
		}
	}()
	events, err := agg.Decide(state, cmd)
	if err != nil {
		return decision{err: err, reason: "handler_error"}
	}
	d.state = agg.Evolve(state, events...)
	for _, e := range events {
		name, payload, err := agg.Schemas().Encode(e)
		if err != nil {
			return decision{err: err, reason: "encode_error"}
		}
		if len(payload) > maxRecord {
			return decision{err: fmt.Errorf("event %s of %d bytes exceeds the record limit of %d", name, len(payload), maxRecord), reason: "too_large"}
		}
		d.events = append(d.events, encoded{name, payload})
	}
	if d.stateBytes, err = agg.EncodeState(d.state); err != nil {
		return decision{err: err, reason: "encode_error"}
	}
	// The snapshot is the state plus a few hundred bytes of envelope and
	// dedupe window; a record the broker refuses would fail every
	// transaction of the partition, so it is refused here instead.
	if len(d.stateBytes) > maxRecord-snapshotOverhead {
		return decision{err: fmt.Errorf("state of %d bytes exceeds the record limit of %d", len(d.stateBytes), maxRecord), reason: "too_large"}
	}
	return d
}

// stage makes s the aggregate's state for the rest of the batch. Its
// snapshot is written once, at the end of the partition's batch (in the
// order the batch first touched its aggregates), with the last state
// staged (Kafka Streams' record cache coalesces the same way): the
// changelog needs the state at each commit, not after each command.
func (pb *partBatch) stage(id string, s *aggState) {
	pb.overlay.Put(id, statestore.Entry{Decoded: s})
}

// writeSnapshots writes the snapshot of every aggregate staged in the
// batch, to the changelog and the overlay.
func (pb *partBatch) writeSnapshots() (err error) {
	pb.overlay.Each(func(id string, e statestore.Entry) {
		if err == nil {
			err = pb.writeSnapshot(id, e.Decoded.(*aggState))
		}
	})
	return err
}

// writeSnapshot writes the snapshot of aggregate id at s.
func (pb *partBatch) writeSnapshot(id string, s *aggState) error {
	agg := pb.a.agg
	if s.stateBytes == nil { // the initial state
		enc, err := agg.EncodeState(s.state)
		if err != nil {
			return fmt.Errorf("encode state of %s: %w", id, err)
		}
		withBytes := *s
		withBytes.stateBytes = enc
		s = &withBytes
	}
	var replies int
	pb.bodies, replies = s.recent.appendBodies(pb.bodies[:0], pb.b.w.cfg.DedupeWindow)
	size := snapshotEnvelope + len(id) + len(s.stateBytes)
	for _, b := range pb.bodies {
		size += len(b)
	}
	v := agg.Schemas().AppendSnapshot(pb.ar.buf(size), id, s.version, s.commandOffset, s.stateBytes, replies, pb.bodies)
	pb.overlay.Put(id, statestore.Entry{Value: v, Decoded: s})
	r := pb.record()
	r.Topic, r.Partition, r.Key, r.Value = pb.a.topics.Snapshots, pb.a.key.partition, append(pb.ar.buf(len(id)), id...), v
	pb.produce(kindSnapshot, r, pb.snapshotPromise)
	return nil
}

// event builds the record of one event at version v.
func (pb *partBatch) event(c *command, v int64, e encoded) *kgo.Record {
	// ce_id is "<aggregate id>/<version>", ce_aggregateversion its tail:
	// one buffer holds both.
	id := c.rec.Key
	buf := strconv.AppendInt(append(append(pb.ar.buf(len(id)+21), id...), '/'), v, 10)
	r := pb.record()
	r.Topic, r.Partition, r.Key, r.Value = pb.a.topics.Events, pb.a.key.partition, id, e.payload
	r.Headers = pb.headers(c, buf, typeValue(e.name), buf[len(id)+1:])
	return r
}

// typeValue returns the ce_type header value of a record name: the name's
// own bytes, which the client only reads. (Looked up in a sync.Map of
// copies, it was 0.75% of the worker's CPU flat out.)
func typeValue(name string) []byte {
	return unsafe.Slice(unsafe.StringData(name), len(name))
}

// Header values the same on every record; records share them (the client
// only reads them).
var (
	specVersionValue = []byte(schemas.SpecVersion)
	contentTypeValue = []byte(schemas.ContentType)
	replyTypeValue   = []byte(schemas.ReplyName)
)

// headers are the CloudEvents headers of what a worker emits for c; the
// subject is the aggregate id, c's key.
func (pb *partBatch) headers(c *command, ceID, ceType, version []byte) []kgo.RecordHeader {
	h := pb.ar.headerSlice(10)
	h[0] = kgo.RecordHeader{Key: schemas.HeaderSpecVersion, Value: specVersionValue}
	h[1] = kgo.RecordHeader{Key: schemas.HeaderID, Value: ceID}
	h[2] = kgo.RecordHeader{Key: schemas.HeaderType, Value: ceType}
	h[3] = kgo.RecordHeader{Key: schemas.HeaderSource, Value: pb.a.sourceValue}
	h[4] = kgo.RecordHeader{Key: schemas.HeaderSubject, Value: c.rec.Key}
	h[5] = kgo.RecordHeader{Key: schemas.HeaderTime, Value: c.rawTime}
	h[6] = kgo.RecordHeader{Key: schemas.HeaderContentType, Value: contentTypeValue}
	h[7] = kgo.RecordHeader{Key: schemas.HeaderCorrelationID, Value: c.rawCorrelationID}
	h[8] = kgo.RecordHeader{Key: schemas.HeaderCausationID, Value: c.rawID}
	h[9] = kgo.RecordHeader{Key: schemas.HeaderAggregateVersion, Value: version}
	return h
}

// reply sends rep to the command's ce_replyto. A reply topic that does not
// exist is logged and the reply dropped: producing to it would fail every
// transaction. Any other failure to address it aborts the transaction,
// which is redone: a committed command never loses its reply to a passing
// metadata error.
func (pb *partBatch) reply(ctx context.Context, c *command, rep schemas.Reply) error {
	v, err := pb.encodeReply(c, rep)
	if err != nil {
		return err
	}
	return pb.sendReply(ctx, c, rep, v)
}

// encodeReply encodes rep, the reply to c, in the batch's arena.
func (pb *partBatch) encodeReply(c *command, rep schemas.Reply) ([]byte, error) {
	v, err := pb.a.agg.Schemas().AppendReply(pb.ar.buf(schemas.ReplySize(rep)), rep)
	if err != nil {
		return nil, fmt.Errorf("reply to %s: %w", c.id, err)
	}
	return v, nil
}

// sendReply sends rep, encoded as v, like reply.
func (pb *partBatch) sendReply(ctx context.Context, c *command, rep schemas.Reply, v []byte) error {
	if c.replyTo == "" {
		return nil
	}
	w := pb.b.w
	if c.replyTo != pb.replyTopic {
		n, err := w.topics.partitions(ctx, c.replyTo)
		if errors.Is(err, errNoTopic) {
			w.log.Debug("reply dropped: the reply topic does not exist", "command", c.id, "topic", c.replyTo)
			return nil
		}
		if err != nil {
			return fmt.Errorf("reply to %s: %w", c.id, err)
		}
		pb.replyTopic, pb.replyPartitions = c.replyTo, n
	}
	n := pb.replyPartitions
	p := c.replyPartition
	if p < 0 || p >= n {
		p = topology.Partition([]byte(c.id), n)
	}
	// ce_id is "<command id>/reply", then ce_aggregateversion: one buffer.
	buf := append(append(pb.ar.buf(len(c.rawID)+26), c.rawID...), "/reply"...)
	idEnd := len(buf)
	buf = strconv.AppendInt(buf, rep.Version, 10)
	r := pb.record()
	r.Topic, r.Partition, r.Key, r.Value = c.replyTo, p, c.rawID, v
	r.Headers = pb.headers(c, buf[:idEnd:idEnd], replyTypeValue, buf[idEnd:])
	pb.produce(kindReply, r, pb.b.promise)
	return nil
}

// refuse answers a command that cannot be decided with status and a reason,
// and puts a copy in the dead-letter topic.
func (pb *partBatch) refuse(ctx context.Context, c *command, status schemas.Status, err error) error {
	reason, detail := "invalid", err.Error()
	var ie *invalidError
	if errors.As(err, &ie) {
		reason, detail = ie.reason, ie.detail
	}
	pb.b.w.log.Debug("command refused", "status", status, "reason", reason, "detail", detail,
		"topic", c.rec.Topic, "partition", c.rec.Partition, "offset", c.rec.Offset)
	pb.deadLetter(c.rec, reason, detail)
	pb.tally.command(status, c.rec.Timestamp)
	if c.id == "" || len(c.id) > maxIDBytes {
		return nil // a reply is keyed by the command id: none, or none that fits
	}
	return pb.reply(ctx, c, schemas.Reply{CommandID: c.id, AggregateID: string(c.rec.Key), Status: status, Reason: reason})
}

// deadLetter copies r to the dead-letter topic with headers saying why and
// where it was read.
func (pb *partBatch) deadLetter(r *kgo.Record, reason, detail string) {
	value, h := r.Value, r.Headers[:len(r.Headers):len(r.Headers)]
	if reason == "too_large" { // the copy must fit where the original did not
		value, h = nil, nil
	}
	h = append(h,
		kgo.RecordHeader{Key: schemas.HeaderDLQReason, Value: []byte(reason)},
		kgo.RecordHeader{Key: schemas.HeaderDLQDetail, Value: []byte(detail)},
		kgo.RecordHeader{Key: schemas.HeaderDLQTopic, Value: []byte(r.Topic)},
		kgo.RecordHeader{Key: schemas.HeaderDLQPartition, Value: []byte(strconv.Itoa(int(r.Partition)))},
		kgo.RecordHeader{Key: schemas.HeaderDLQOffset, Value: []byte(strconv.FormatInt(r.Offset, 10))},
	)
	pb.tally.deadLetter(reason)
	pb.out(&kgo.Record{
		Topic: pb.a.topics.DLQ, Partition: r.Partition, Key: r.Key, Value: value, Headers: h,
	}, pb.b.promise)
}

// forward re-sends a command that landed on the wrong partition to the one
// its key hashes to, inside the transaction: it is decided there, once.
func (pb *partBatch) forward(r *kgo.Record, to int32) {
	pb.b.w.log.Debug("forwarding misrouted command", "topic", r.Topic, "from", r.Partition, "to", to, "offset", r.Offset)
	pb.produce(kindForward, &kgo.Record{
		Topic: r.Topic, Partition: to, Key: r.Key, Value: r.Value, Headers: r.Headers, Timestamp: r.Timestamp,
	}, pb.b.promise)
}
