package schemas

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
)

// The worker writes a snapshot, with its whole dedupe window, for every
// aggregate a transaction touches, and reads one back for every aggregate
// not in its cache. Through hamba, a window of 32 replies made the snapshot
// the most expensive record of a command; these two functions write and
// read the current decider.Snapshot by hand, keeping each reply of the
// window as the bytes it was encoded to once.

// AppendSnapshot appends to dst the single-object encoding of a
// decider.Snapshot whose dedupe window of replies replies is given already
// encoded: bodies holds the body of each (what follows an encoded
// decider.Reply's 10-byte header), oldest first, one after another, split
// across its slices in any way (ReadSnapshot's bodies, a reply encoded
// since, …). It writes the bytes Encode(Snapshot{…}) writes, without
// encoding the dedupe window again: a worker writes a snapshot with its
// whole window for every command, and a window of 32 replies made that
// encode five times the cost of the rest.
func (r *Registry) AppendSnapshot(dst []byte, aggregateID string, version, commandOffset int64, state []byte, replies int, bodies [][]byte) []byte {
	dst = append(dst, r.byName[SnapshotName].header...)
	dst = appendString(dst, aggregateID) // Avro longs are zigzag varints, strings prefixed by one
	dst = binary.AppendVarint(dst, version)
	dst = binary.AppendVarint(dst, commandOffset)
	dst = binary.AppendVarint(dst, int64(len(state)))
	dst = append(dst, state...)
	if replies > 0 {
		// One block, its count negative and followed by its size in bytes,
		// as hamba writes it (the Avro spec allows both forms).
		size := 0
		for _, b := range bodies {
			size += len(b)
		}
		dst = binary.AppendVarint(dst, -int64(replies))
		dst = binary.AppendVarint(dst, int64(size))
		for _, b := range bodies {
			dst = append(dst, b...)
		}
	}
	return append(dst, 0) // the end of the array
}

// AppendReply appends to dst the single-object encoding of rep: the bytes
// Encode(rep) returns, written by hand (a worker writes one for every
// command, and hamba's reflection made it the most expensive encode of a
// command). A status that is not one of decider.Status is an error.
func (r *Registry) AppendReply(dst []byte, rep Reply) ([]byte, error) {
	status := slices.Index(statuses, rep.Status)
	if status < 0 {
		return dst, fmt.Errorf("encode %s: unknown status %q", ReplyName, rep.Status)
	}
	dst = append(dst, r.byName[ReplyName].header...)
	dst = appendString(dst, rep.CommandID)
	dst = appendString(dst, rep.AggregateID)
	dst = binary.AppendVarint(dst, int64(status))
	dst = binary.AppendVarint(dst, rep.Version)
	dst = appendString(dst, rep.Reason)
	return binary.AppendVarint(dst, int64(rep.Events)), nil // an Avro int is zigzag-encoded like a long
}

// AppendWindowReply appends to dst the body of reply, a decider.Reply as
// AppendReply encodes it, with an empty aggregateId: the form a snapshot's
// dedupe window keeps its replies in (the snapshot holds the id once). A
// reply that is not well formed appends nothing.
func AppendWindowReply(dst, reply []byte) []byte {
	body := reply[min(len(reply), FramingSize):]
	_, idEnd := skipBytes(body, 0)
	_, aggEnd := skipBytes(body, idEnd)
	if aggEnd < 0 {
		return dst
	}
	dst = append(dst, body[:idEnd]...)
	dst = append(dst, 0) // "": a string of length 0
	return append(dst, body[aggEnd:]...)
}

// ReplySize bounds the length of rep's single-object encoding.
func ReplySize(rep Reply) int {
	return FramingSize + len(rep.CommandID) + len(rep.AggregateID) + len(rep.Reason) + 6*binary.MaxVarintLen64
}

func appendString(dst []byte, s string) []byte {
	return append(binary.AppendVarint(dst, int64(len(s))), s...)
}

// ReadSnapshot decodes a decider.Snapshot but for its dedupe window: it
// returns the number of replies in the window and their encoded bodies,
// oldest first, one after another, as AppendSnapshot takes them (a slice of
// data when the window is one Avro block, as every writer we know writes
// it), and leaves s.Recent nil; NextReply splits the bodies and ReadReply
// decodes one when it is needed. Every reply is checked to be well formed.
// A snapshot written with an older schema version is decoded through
// Decode and its replies encoded again.
func (r *Registry) ReadSnapshot(data []byte) (s Snapshot, replies int, bodies []byte, err error) {
	b := r.byName[SnapshotName]
	fp, body, err := splitHeader(data)
	if err != nil || fp != b.fp {
		return r.readSnapshotSlow(data)
	}
	d := avroReader{buf: body}
	s = Snapshot{AggregateID: d.string(), Version: d.long(), CommandOffset: d.long(), State: d.bytes()}
	for blocks := 0; d.err == nil; blocks++ {
		n := d.blockCount()
		if n == 0 {
			break
		}
		if n > int64(len(d.buf)) { // every reply takes at least one byte
			d.fail()
			break
		}
		start := d.pos
		for i := int64(0); i < n && d.err == nil; i++ {
			d.reply(false)
		}
		replies += int(n)
		if blocks == 0 {
			bodies = d.buf[start:d.pos:d.pos]
		} else { // a block header lies between the blocks' replies
			bodies = append(bodies[:len(bodies):len(bodies)], d.buf[start:d.pos]...)
		}
	}
	if d.err == nil && d.pos != len(d.buf) {
		d.err = errors.New("trailing bytes after the record")
	}
	if d.err != nil {
		return Snapshot{}, 0, nil, fmt.Errorf("decode %s: %w: %w", SnapshotName, ErrBody, d.err)
	}
	return s, replies, bodies, nil
}

// ReadOwnSnapshot is ReadSnapshot for data that AppendSnapshot wrote in
// this process (a worker's cache of the snapshots it wrote): the window is
// taken whole by its block's size, not read reply by reply, so its replies
// are not checked (with a full window of 32: 70 instead of 780 ns,
// BenchmarkCodec/read-own).
// Data in any other form is read by ReadSnapshot; data from anywhere else
// (a changelog, a store) must be.
func (r *Registry) ReadOwnSnapshot(data []byte) (s Snapshot, replies int, bodies []byte, err error) {
	fp, body, err := splitHeader(data)
	if err != nil || fp != r.byName[SnapshotName].fp {
		return r.ReadSnapshot(data)
	}
	d := avroReader{buf: body}
	s = Snapshot{AggregateID: d.string(), Version: d.long(), CommandOffset: d.long(), State: d.bytes()}
	switch n := d.long(); {
	case d.err != nil:
	case n == 0 && d.pos == len(d.buf):
		return s, 0, nil, nil
	case n < 0: // one block with its size, then the end, as AppendSnapshot writes it
		size := d.long()
		if end := d.pos + int(size); d.err == nil && size > 0 && end == len(d.buf)-1 && d.buf[end] == 0 {
			return s, int(-n), d.buf[d.pos:end:end], nil
		}
	}
	return r.ReadSnapshot(data)
}

// NextReply splits the first reply off bodies, encoded replies one after
// another as ReadSnapshot returns them: its body and the rest. ok is false
// when bodies does not begin with a well-formed reply.
func NextReply(bodies []byte) (body, rest []byte, ok bool) {
	d := avroReader{buf: bodies}
	d.reply(false)
	if d.err != nil {
		return nil, bodies, false
	}
	return bodies[:d.pos:d.pos], bodies[d.pos:], true
}

// ReadReply decodes the body of a decider.Reply (what follows its 10-byte
// header), as NextReply splits them off ReadSnapshot's bodies.
func ReadReply(body []byte) (Reply, error) {
	d := avroReader{buf: body}
	rep := d.reply(true)
	if d.err == nil && d.pos != len(d.buf) {
		d.err = errors.New("trailing bytes after the record")
	}
	if d.err != nil {
		return Reply{}, fmt.Errorf("decode %s: %w: %w", ReplyName, ErrBody, d.err)
	}
	return rep, nil
}

// FindReply returns the body of the reply to commandID among bodies,
// replies that ReadSnapshot returned or that were encoded here, one after
// another. It skips each reply by its fields' lengths without checking them
// again: a search of the dedupe window runs for every command, and checked
// as NextReply checks them, the replies of a full window took most of its
// time. Bodies it cannot skip end the search. (Searching the bodies for
// commandID's bytes first, to take apart only those that hold them, took
// longer than the walk: 535 against 428 ns for a full window of UUID-like
// ids not holding it, BenchmarkFindReply, against the walk as it was then.)
func FindReply(bodies []byte, commandID string) ([]byte, bool) {
	for pos := 0; pos < len(bodies); {
		idStart, idEnd, end := skipReply(bodies, pos)
		if end < 0 {
			return nil, false
		}
		if string(bodies[idStart:idEnd]) == commandID {
			return bodies[pos:end:end], true
		}
		pos = end
	}
	return nil, false
}

// SkipReplies returns bodies, replies as FindReply takes them, without
// their first n, each skipped by its fields' lengths without checking it
// (see FindReply); nil if there are fewer.
func SkipReplies(bodies []byte, n int) []byte {
	pos := 0
	for range n {
		_, _, pos = skipReply(bodies, pos)
	}
	if pos < 0 {
		return nil
	}
	return bodies[pos:]
}

// The functions that skip replies keep their offset in a local variable,
// not in an avroReader, whose position the compiler kept in memory: a load
// and a store for every byte read (a full window searched: 400 → 290 ns,
// BenchmarkFindReply). An offset of -1 is what cannot be skipped, and
// skips to -1.

// skipReply skips the reply body at pos in b: it returns where its
// commandId's bytes are and the offset after it.
func skipReply(b []byte, pos int) (idStart, idEnd, end int) {
	idStart, idEnd = skipBytes(b, pos)
	_, end = skipBytes(b, idEnd) // aggregateId
	end = skipVarint(b, end, 5)  // status
	end = skipVarint(b, end, 10) // version
	_, end = skipBytes(b, end)   // reason
	end = skipVarint(b, end, 5)  // events
	return idStart, idEnd, end
}

// skipVarint returns the offset after the varint of at most max bytes at
// pos in b.
func skipVarint(b []byte, pos, max int) int {
	if pos < 0 {
		return -1
	}
	for end := min(len(b), pos+max); pos < end; pos++ {
		if b[pos] < 0x80 {
			return pos + 1
		}
	}
	return -1
}

// skipBytes returns where the content of the Avro bytes (or string) at pos
// in b begins and ends.
func skipBytes(b []byte, pos int) (start, end int) {
	if pos < 0 || pos >= len(b) {
		return -1, -1
	}
	if c := b[pos]; c&0x81 == 0 { // a length below 64: one zigzag byte, even
		if end = pos + 1 + int(c>>1); end <= len(b) {
			return pos + 1, end
		}
		return -1, -1
	}
	d := avroReader{buf: b, pos: pos}
	v := d.bytes()
	if d.err != nil {
		return -1, -1
	}
	return d.pos - len(v), d.pos
}

// readSnapshotSlow is ReadSnapshot for a snapshot of another schema
// version.
func (r *Registry) readSnapshotSlow(data []byte) (Snapshot, int, []byte, error) {
	v, err := r.Decode(SnapshotName, data)
	if err != nil {
		return Snapshot{}, 0, nil, err
	}
	s := v.(Snapshot)
	var bodies []byte
	for _, rep := range s.Recent {
		_, enc, err := r.Encode(rep)
		if err != nil {
			return Snapshot{}, 0, nil, err
		}
		bodies = append(bodies, enc[FramingSize:]...)
	}
	n := len(s.Recent)
	s.Recent = nil
	return s, n, bodies, nil
}

// statuses are the symbols of decider.Status in schema order.
var statuses = []Status{Accepted, Rejected, Conflict, Expired, Invalid, Failed}

// FramingSize is the length of the single-object header before the Avro
// body: the 2-byte magic and the 8-byte fingerprint.
const FramingSize = 10

// avroReader reads Avro binary primitives; the first error sticks.
type avroReader struct {
	buf []byte
	pos int
	err error
}

var errMalformed = errors.New("truncated or malformed")

func (d *avroReader) fail() {
	if d.err == nil {
		d.err = errMalformed
	}
}

// varint reads an unsigned varint of at most max bytes, as hamba does:
// bits past the 64th are dropped, a longer varint is an error. (It reads
// on after an error, which it does not check for, so that it inlines: what
// is read then is dropped.)
func (d *avroReader) varint(max int) uint64 {
	var v uint64
	for i := 0; i < max && d.pos < len(d.buf); i++ {
		b := d.buf[d.pos]
		d.pos++
		v |= uint64(b&0x7f) << (7 * i)
		if b < 0x80 {
			return v
		}
	}
	d.fail()
	return 0
}

// long reads an Avro long: a zigzag varint of at most 10 bytes.
func (d *avroReader) long() int64 {
	v := d.varint(10)
	return int64(v>>1) ^ -int64(v&1)
}

// int reads an Avro int: a zigzag varint of at most 5 bytes, of which
// hamba keeps the low 32 bits.
func (d *avroReader) int() int32 {
	v := uint32(d.varint(5))
	return int32(v>>1) ^ -int32(v&1)
}

func (d *avroReader) bytes() []byte {
	v := d.varint(10) // a long, as long reads it, without the call
	n := int64(v>>1) ^ -int64(v&1)
	if d.err != nil || n < 0 || n > int64(len(d.buf)-d.pos) {
		d.fail()
		return nil
	}
	b := d.buf[d.pos : d.pos+int(n) : d.pos+int(n)]
	d.pos += int(n)
	return b
}

func (d *avroReader) string() string { return string(d.bytes()) }

// blockCount reads the header of an array's or a map's block: its count
// of items, 0 at the end, and its size in bytes when it has one (a negative
// count says so). A count still negative once negated, MinInt64, is an
// error: hamba would grow a slice to a negative length from it.
func (d *avroReader) blockCount() int64 {
	n := d.long()
	if n < 0 {
		n = -n
		d.long() // the block's size in bytes
	}
	if n < 0 {
		if d.err == nil {
			d.err = errors.New("array or map block count out of range")
		}
		return 0
	}
	return n
}

// reply reads a decider.Reply; only if decode does it make its strings.
func (d *avroReader) reply(decode bool) Reply {
	id, agg, status := d.bytes(), d.bytes(), d.int() // an enum's index is an int
	if status < 0 || int(status) >= len(statuses) {
		d.fail()
	}
	version, reason, events := d.long(), d.bytes(), d.int()
	if !decode || d.err != nil {
		return Reply{}
	}
	return Reply{CommandID: string(id), AggregateID: string(agg), Status: statuses[status], Version: version, Reason: string(reason), Events: events}
}
