package schemas

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/hamba/avro/v2"
)

// crc64Avro is the CRC-64-AVRO fingerprint of the Avro specification
// ("Schema Fingerprints"), written here from the spec rather than taken from
// the codec, so the tests check the codec against an independent answer.
func crc64Avro(data []byte) uint64 {
	const empty = 0xc15d213aa4d7a795
	var table [256]uint64
	for i := range table {
		fp := uint64(i)
		for range 8 {
			fp = (fp >> 1) ^ (empty & -(fp & 1))
		}
		table[i] = fp
	}
	fp := uint64(empty)
	for _, b := range data {
		fp = (fp >> 8) ^ table[byte(fp)^b]
	}
	return fp
}

// fingerprintLE is the 8 bytes that follow the magic on the wire.
func fingerprintLE(canonical string) []byte {
	return binary.LittleEndian.AppendUint64(nil, crc64Avro([]byte(canonical)))
}

// The known answers of the Avro project's own test suite
// (share/test/data/schema-tests.txt): if crc64Avro gets these right, it is
// CRC-64-AVRO.
func TestCRC64AvroKnownAnswers(t *testing.T) {
	for canonical, want := range map[string]int64{
		`"null"`:    7195948357588979594,
		`"boolean"`: -6970731678124411036,
		`"int"`:     8247732601305521295,
		`"long"`:    -3434872931120570953,
		`"float"`:   5583340709985441680,
		`"double"`:  -8181574048448539266,
		`"bytes"`:   5746618253357095269,
		`"string"`:  -8142146995180207161,
	} {
		if got := int64(crc64Avro([]byte(canonical))); got != want {
			t.Errorf("crc64Avro(%s) = %d, want %d", canonical, got, want)
		}
	}
}

func TestReplyRoundTrip(t *testing.T) {
	r := NewRegistry()
	for _, want := range []Reply{
		{CommandID: "cmd-0001", AggregateID: "acc-1", Status: Accepted, Version: 2, Events: 1},
		{CommandID: "cmd-0002", AggregateID: "acc-1", Status: Rejected, Version: 2, Reason: "insufficient_funds"},
		{CommandID: "c", AggregateID: "a", Status: Conflict, Version: 7, Reason: "version_mismatch"},
		{CommandID: "c", AggregateID: "a", Status: Expired, Reason: "deadline_passed"},
		{CommandID: "c", AggregateID: "", Status: Invalid, Reason: "missing_key"},
		{CommandID: "c", AggregateID: "a", Status: Failed, Version: 1 << 40, Reason: "handler_panic"},
		{CommandID: "ünïcødé ✓", AggregateID: strings.Repeat("x", 5000), Status: Accepted, Version: -1, Events: -3},
	} {
		name, data, err := r.Encode(want)
		if err != nil {
			t.Fatalf("Encode(%+v): %v", want, err)
		}
		if name != ReplyName {
			t.Errorf("Encode(Reply) name = %q, want %q", name, ReplyName)
		}
		got, err := r.Decode(ReplyName, data)
		if err != nil {
			t.Fatalf("Decode(Encode(%+v)): %v", want, err)
		}
		if got != want {
			t.Errorf("round trip = %+v, want %+v", got, want)
		}
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	r := NewRegistry()
	recent := make([]Reply, 32)
	for i := range recent {
		recent[i] = Reply{CommandID: "cmd-" + string(rune('a'+i%26)), AggregateID: "acc-1", Status: Accepted, Version: int64(i + 1), Events: 1}
	}
	for _, want := range []Snapshot{
		{AggregateID: "acc-1", Version: 3, CommandOffset: 41, State: []byte{0xc3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0}, Recent: recent},
		{AggregateID: "acc-2", Version: 1, CommandOffset: 0, State: []byte{}, Recent: []Reply{}},
		{AggregateID: "acc-3", Version: 1 << 50, CommandOffset: 1 << 50, State: bytes.Repeat([]byte{0xff}, 4096), Recent: recent[:1]},
	} {
		name, data, err := r.Encode(want)
		if err != nil {
			t.Fatalf("Encode(snapshot %s): %v", want.AggregateID, err)
		}
		if name != SnapshotName {
			t.Errorf("Encode(Snapshot) name = %q, want %q", name, SnapshotName)
		}
		got, err := r.Decode(SnapshotName, data)
		if err != nil {
			t.Fatalf("Decode(Encode(snapshot %s)): %v", want.AggregateID, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("round trip = %+v, want %+v", got, want)
		}
		// ReadSnapshot reads the same, and each reply's bytes.
		fastGot, bodies, err := readSnapshotWhole(r, data)
		if err != nil || !reflect.DeepEqual(fastGot, want) || len(bodies) != len(want.Recent) {
			t.Errorf("ReadSnapshot = %+v, %d bodies, %v; want %+v", fastGot, len(bodies), err, want)
		}
		// AppendSnapshot writes the same bytes from replies encoded before.
		for i, rep := range want.Recent {
			_, enc, err := r.Encode(rep)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(bodies[i], enc[FramingSize:]) {
				t.Errorf("ReadSnapshot: body of reply %d is % x, encoded alone % x", i, bodies[i], enc[FramingSize:])
			}
		}
		if fast := r.AppendSnapshot(nil, want.AggregateID, want.Version, want.CommandOffset, want.State, len(bodies), bodies); !bytes.Equal(fast, data) {
			t.Errorf("AppendSnapshot(%s) wrote %d bytes, Encode %d; they differ from byte %d", want.AggregateID, len(fast), len(data), firstDiff(fast, data))
		}
		// And from the bodies in one piece, as ReadSnapshot returns them.
		snap, n, whole, _ := r.ReadSnapshot(data)
		fast := r.AppendSnapshot(nil, want.AggregateID, want.Version, want.CommandOffset, want.State, n, [][]byte{whole})
		if !bytes.Equal(fast, data) {
			t.Errorf("AppendSnapshot(%s) of ReadSnapshot's bodies differs from Encode from byte %d", want.AggregateID, firstDiff(fast, data))
		}
		// ReadOwnSnapshot reads what AppendSnapshot wrote as ReadSnapshot does.
		own, ownN, ownWhole, err := r.ReadOwnSnapshot(fast)
		if err != nil || !reflect.DeepEqual(own, snap) || ownN != n || !bytes.Equal(ownWhole, whole) {
			t.Errorf("ReadOwnSnapshot(%s) = %+v, %d replies, %v; ReadSnapshot %+v, %d replies", want.AggregateID, own, ownN, err, snap, n)
		}
	}
	// A nil Recent is written as an empty array and read back as one.
	_, data, err := r.Encode(Snapshot{AggregateID: "acc-4", Version: 1})
	if err != nil {
		t.Fatal(err)
	}
	got, err := r.Decode(SnapshotName, data)
	if err != nil {
		t.Fatal(err)
	}
	if s := got.(Snapshot); s.AggregateID != "acc-4" || len(s.Recent) != 0 || len(s.State) != 0 {
		t.Errorf("nil Recent round trip = %+v", s)
	}
	// A window in two Avro blocks (one with its size, one without, both
	// allowed by the spec) reads as the same replies, in one piece.
	one, two := recent[0], recent[1]
	_, oneEnc, _ := r.Encode(one)
	_, twoEnc, _ := r.Encode(two)
	// Block 1 as AppendSnapshot writes it, its end dropped; block 2 with
	// a count of 1 (zigzag 2) and no size; then the end.
	blocks := r.AppendSnapshot(nil, "acc-5", 2, 7, nil, 1, [][]byte{oneEnc[FramingSize:]})
	blocks = append(blocks[:len(blocks)-1], 2)
	blocks = append(append(blocks, twoEnc[FramingSize:]...), 0)
	want, err := r.Decode(SnapshotName, blocks)
	if err != nil {
		t.Fatalf("Decode(two blocks): %v", err)
	}
	fast, bodies, err := readSnapshotWhole(r, blocks)
	if err != nil || !reflect.DeepEqual(fast, want) || len(bodies) != 2 || fast.Recent[1] != two {
		t.Errorf("ReadSnapshot(two blocks) = %+v, %d bodies, %v; Decode = %+v", fast, len(bodies), err, want)
	}
	// ReadOwnSnapshot reads a form AppendSnapshot does not write, and a
	// truncated snapshot, by ReadSnapshot.
	for _, data := range [][]byte{blocks, blocks[:len(blocks)-1]} {
		s1, n1, b1, err1 := r.ReadSnapshot(data)
		s2, n2, b2, err2 := r.ReadOwnSnapshot(data)
		if !reflect.DeepEqual(s1, s2) || n1 != n2 || !bytes.Equal(b1, b2) || (err1 == nil) != (err2 == nil) {
			t.Errorf("ReadOwnSnapshot(% x) = %+v, %d, %v; ReadSnapshot %+v, %d, %v", data, s2, n2, err2, s1, n1, err1)
		}
	}
}

// avscDirs are the directories whose .avsc files are decider's wire format:
// its own, and the example domain's.
var avscDirs = []string{".", "../examples/accounts"}

// parsedSchema is one .avsc file parsed on its own, outside any Registry.
type parsedSchema struct {
	file      string
	schema    avro.NamedSchema
	canonical string
}

// parseAvscFiles parses every .avsc file of avscDirs with a cache of its
// own, retrying files whose references are not yet known.
func parseAvscFiles(t *testing.T) []parsedSchema {
	t.Helper()
	cache := &avro.SchemaCache{}
	var out []parsedSchema
	for _, dir := range avscDirs {
		files, err := filepath.Glob(filepath.Join(dir, "*.avsc"))
		if err != nil {
			t.Fatal(err)
		}
		if len(files) == 0 {
			t.Fatalf("no .avsc files in %s", dir)
		}
		pending := slices.Clone(files)
		for len(pending) > 0 {
			var left []string
			var lastErr error
			for _, f := range pending {
				text, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				s, err := avro.ParseBytesWithCache(text, "", cache)
				if err != nil {
					left, lastErr = append(left, f), err
					continue
				}
				named, ok := s.(avro.NamedSchema)
				if !ok {
					t.Fatalf("%s: not a named schema", f)
				}
				out = append(out, parsedSchema{file: f, schema: named, canonical: s.String()})
			}
			if len(left) == len(pending) {
				t.Fatalf("cannot parse %v: %v", left, lastErr)
			}
			pending = left
		}
	}
	return out
}

// wireRegistry is a registry with decider's schemas and the example's, the
// latter read from disk: the schemas package cannot import the example.
func wireRegistry(t *testing.T) *Registry {
	t.Helper()
	r := NewRegistry()
	for _, dir := range avscDirs[1:] {
		if err := r.AddFS(os.DirFS(dir), "."); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// sampleJSON returns a value of schema s in the Avro JSON EncodeJSON reads.
func sampleJSON(t *testing.T, s avro.Schema) any {
	t.Helper()
	switch s := s.(type) {
	case *avro.RecordSchema:
		obj := map[string]any{}
		for _, f := range s.Fields() {
			obj[f.Name()] = sampleJSON(t, f.Type())
		}
		return obj
	case *avro.RefSchema:
		return sampleJSON(t, s.Schema())
	case *avro.ArraySchema:
		return []any{sampleJSON(t, s.Items()), sampleJSON(t, s.Items())}
	case *avro.MapSchema:
		return map[string]any{"k": sampleJSON(t, s.Values())}
	case *avro.EnumSchema:
		return s.Symbols()[len(s.Symbols())-1]
	case *avro.PrimitiveSchema:
		switch s.Type() {
		case avro.Null:
			return nil
		case avro.Boolean:
			return true
		case avro.Int, avro.Long:
			return 42
		case avro.Float, avro.Double:
			return 1.5
		case avro.String:
			return "sample"
		case avro.Bytes:
			return "b\u00e9\u00ff" // bytes 62 e9 ff
		}
	}
	t.Fatalf("sampleJSON: schema type %s not supported by this test", s.Type())
	return nil
}

// Every .avsc file of the wire format is written as 0xC3 0x01, then the
// CRC-64-AVRO of its Parsing Canonical Form, little-endian, then the body.
func TestEveryAvscIsFramedWithItsFingerprint(t *testing.T) {
	r := wireRegistry(t)
	parsed := parseAvscFiles(t)
	if len(parsed) < 11 {
		t.Fatalf("parsed %d .avsc files, want at least decider's 2 and the example's 9", len(parsed))
	}
	for _, p := range parsed {
		name := p.schema.FullName()
		t.Run(name, func(t *testing.T) {
			want := fingerprintLE(p.canonical)
			// The library's own fingerprint agrees with the one written from the spec.
			lib, err := p.schema.FingerprintUsing(avro.CRC64AvroLE)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(lib, want) {
				t.Fatalf("%s: hamba fingerprint % x, spec fingerprint % x of %s", p.file, lib, want, p.canonical)
			}
			if fp, ok := r.Fingerprint(name); !ok || !bytes.Equal(fp, want) {
				t.Errorf("Registry.Fingerprint(%s) = % x, %v; want % x", name, fp, ok, want)
			}
			sample, err := json.Marshal(sampleJSON(t, p.schema))
			if err != nil {
				t.Fatal(err)
			}
			data, err := r.EncodeJSON(name, sample)
			if err != nil {
				t.Fatalf("EncodeJSON(%s, %s): %v", name, sample, err)
			}
			if len(data) < 10 || data[0] != 0xC3 || data[1] != 0x01 || !bytes.Equal(data[2:10], want) {
				t.Fatalf("EncodeJSON(%s) starts % x, want c3 01 % x", name, data[:min(len(data), 10)], want)
			}
			// The body is plain Avro binary of the writer schema.
			var generic any
			if err := avro.Unmarshal(p.schema, data[10:], &generic); err != nil {
				t.Errorf("body of %s does not decode as its schema: %v", name, err)
			}
			// DecodeJSON writes what EncodeJSON reads.
			back, err := r.DecodeJSON(name, data)
			if err != nil {
				t.Fatalf("DecodeJSON(EncodeJSON(%s)): %v", name, err)
			}
			if again, err := r.EncodeJSON(name, back); err != nil || !bytes.Equal(again, data) {
				t.Errorf("EncodeJSON(DecodeJSON(%s) = %s) = % x, %v; want % x", name, back, again, err, data)
			}
			if _, bound := r.Bound(name); bound {
				v, err := r.Decode(name, data)
				if err != nil {
					t.Fatalf("Decode(EncodeJSON(%s)): %v", name, err)
				}
				_, typed, err := r.Encode(v)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(typed, data) {
					t.Errorf("Encode(%+v) = % x, EncodeJSON wrote % x", v, typed, data)
				}
			}
		})
	}
}

// sampleData is a valid single-object encoding of each of decider's records.
func sampleData(t testing.TB) (reply, snapshot []byte) {
	r := NewRegistry()
	_, reply, err := r.Encode(Reply{CommandID: "cmd-0001", AggregateID: "acc-1", Status: Accepted, Version: 2, Events: 1})
	if err != nil {
		t.Fatal(err)
	}
	_, snapshot, err = r.Encode(Snapshot{AggregateID: "acc-1", Version: 2, CommandOffset: 9, State: []byte{1, 2}, Recent: []Reply{{CommandID: "c", AggregateID: "acc-1", Status: Rejected, Reason: "no_account"}}})
	if err != nil {
		t.Fatal(err)
	}
	return reply, snapshot
}

func TestDecodeErrors(t *testing.T) {
	r := NewRegistry()
	reply, snapshot := sampleData(t)
	with := func(i int, b byte) []byte {
		d := slices.Clone(reply)
		d[i] = b
		return d
	}
	for _, tc := range []struct {
		name string
		typ  string
		data []byte
		want error
	}{
		{"nil", ReplyName, nil, ErrFraming},
		{"empty", ReplyName, []byte{}, ErrFraming},
		{"magic only", ReplyName, []byte{0xC3, 0x01}, ErrFraming},
		{"fingerprint cut short", ReplyName, reply[:9], ErrFraming},
		{"bad first magic byte", ReplyName, with(0, 0xC4), ErrFraming},
		{"bad second magic byte", ReplyName, with(1, 0x02), ErrFraming},
		{"plain avro without a header", ReplyName, reply[10:], ErrFraming},
		{"unknown fingerprint", ReplyName, with(9, reply[9]^0xff), ErrUnknownSchema},
		{"fingerprint of another record", ReplyName, snapshot, ErrUnknownSchema},
		{"reply read as a snapshot", SnapshotName, reply, ErrUnknownSchema},
		{"unknown name", "no.such.Record", reply, ErrUnknownType},
		{"known but unbound name", "decider.Status", reply, ErrUnknownType},
		{"empty body", ReplyName, reply[:10], ErrBody},
		{"truncated body", ReplyName, reply[:len(reply)-1], ErrBody},
		{"trailing byte", ReplyName, append(slices.Clone(reply), 0), ErrBody},
		{"enum index out of range", ReplyName, with(25, 0x0c), ErrBody}, // status 6: no such symbol
		{"negative string length", ReplyName, with(10, 0x01), ErrBody},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := r.Decode(tc.typ, tc.data)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Decode(%s, % x) = %v, %v; want an error wrapping %q", tc.typ, tc.data, v, err, tc.want)
			}
			if v != nil {
				t.Errorf("Decode returned %v with its error", v)
			}
		})
	}
	// Every proper prefix of a valid body fails, as ErrBody.
	for n := 10; n < len(reply); n++ {
		if _, err := r.Decode(ReplyName, reply[:n]); !errors.Is(err, ErrBody) {
			t.Errorf("Decode(first %d of %d bytes) = %v, want ErrBody", n, len(reply), err)
		}
	}
	for n := 10; n < len(snapshot); n++ {
		if _, err := r.Decode(SnapshotName, snapshot[:n]); !errors.Is(err, ErrBody) {
			t.Errorf("Decode(snapshot, first %d of %d bytes) = %v, want ErrBody", n, len(snapshot), err)
		}
	}
	// The unknown type errors on the writing and binding side.
	type unbound struct{ X int }
	if _, _, err := r.Encode(unbound{}); !errors.Is(err, ErrUnknownType) {
		t.Errorf("Encode(unbound type) = %v, want ErrUnknownType", err)
	}
	if _, _, err := r.Encode(&Reply{}); !errors.Is(err, ErrUnknownType) {
		t.Errorf("Encode(*Reply) = %v, want ErrUnknownType (Reply is bound, not *Reply)", err)
	}
	if err := Bind[unbound](r, "no.such.Record"); !errors.Is(err, ErrUnknownType) {
		t.Errorf("Bind(no.such.Record) = %v, want ErrUnknownType", err)
	}
	if _, err := r.EncodeJSON("no.such.Record", []byte(`{}`)); !errors.Is(err, ErrUnknownType) {
		t.Errorf("EncodeJSON(no.such.Record) = %v, want ErrUnknownType", err)
	}
}

// An array block count far beyond what the payload can hold is a body
// error, not an allocation that kills the process: a 20-byte command must
// not take down a worker.
func TestDecodeHugeArrayCount(t *testing.T) {
	r := NewRegistry()
	_, snapshot := sampleData(t)
	for _, count := range []uint64{1 << 21, 1 << 40, 1<<62 - 1} {
		data := slices.Clone(snapshot[:10])
		data = append(data, 0, 0, 0, 0)             // aggregateId "", version 0, commandOffset 0, state empty
		data = binary.AppendUvarint(data, count<<1) // zig-zag: the block count of recent
		if _, err := r.Decode(SnapshotName, data); !errors.Is(err, ErrBody) {
			t.Errorf("Decode(snapshot with an array of %d items in %d bytes) = %v, want ErrBody", count, len(data), err)
		}
	}
}

// Version 1 and 2 of one record: v2 adds a field with a default.
const (
	thingV1 = `{"type": "record", "name": "Thing", "namespace": "test.evolution", "fields": [
		{"name": "id", "type": "string"}]}`
	thingV2 = `{"type": "record", "name": "Thing", "namespace": "test.evolution", "fields": [
		{"name": "id", "type": "string"},
		{"name": "count", "type": "long", "default": 7},
		{"name": "label", "type": "string", "default": "none"}]}`
	thingV2NoDefault = `{"type": "record", "name": "Thing", "namespace": "test.evolution", "fields": [
		{"name": "id", "type": "string"},
		{"name": "required", "type": "long"}]}`
)

type thing1 struct {
	ID string `avro:"id"`
}

type thing2 struct {
	ID    string `avro:"id"`
	Count int64  `avro:"count"`
	Label string `avro:"label"`
}

func TestSchemaEvolution(t *testing.T) {
	const name = "test.evolution.Thing"
	r, v1 := registryWithV1(t)
	fp1, _ := r.Fingerprint(name)
	if !bytes.Equal(v1[2:10], fp1) {
		t.Fatalf("v1 bytes carry % x, v1 fingerprint is % x", v1[2:10], fp1)
	}

	if err := r.Add(thingV2); err != nil {
		t.Fatalf("Add(v2): %v", err)
	}
	if err := Bind[thing2](r, name); err != nil {
		t.Fatalf("Bind v2: %v", err)
	}
	fp2, _ := r.Fingerprint(name)
	if bytes.Equal(fp1, fp2) {
		t.Fatal("v2 has v1's fingerprint")
	}

	// Bytes written with v1 are read into the v2 type, with v2's defaults.
	got, err := r.Decode(name, v1)
	if err != nil {
		t.Fatalf("Decode(v1 bytes) with v2 current: %v", err)
	}
	if want := (thing2{ID: "t-1", Count: 7, Label: "none"}); got != want {
		t.Errorf("v1 bytes decode as %+v, want %+v", got, want)
	}

	// v2 values are written with v2's fingerprint and read back whole.
	_, v2, err := r.Encode(thing2{ID: "t-2", Count: 3, Label: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(v2[2:10], fp2) {
		t.Errorf("v2 bytes carry % x, want v2's fingerprint % x", v2[2:10], fp2)
	}
	if got, err := r.Decode(name, v2); err != nil || got != (thing2{ID: "t-2", Count: 3, Label: "x"}) {
		t.Errorf("Decode(v2 bytes) = %+v, %v", got, err)
	}

	// A value of the type bound before is still written as hamba writes
	// it, not with the encoder compiled for the type bound now.
	if _, v, err := r.Encode(thing1{ID: "t-3"}); err != nil {
		t.Errorf("Encode(thing1) after thing2 was bound: %v", err)
	} else if got, err := r.Decode(name, v); err != nil || got != (thing2{ID: "t-3", Count: 7, Label: "none"}) {
		t.Errorf("thing1 written after thing2 was bound decodes as %+v, %v", got, err)
	}

	// Adding a known version again changes nothing.
	if err := r.Add(thingV1); err != nil {
		t.Errorf("Add(v1) again: %v", err)
	}
	if got, err := r.Decode(name, v1); err != nil || got != (thing2{ID: "t-1", Count: 7, Label: "none"}) {
		t.Errorf("after adding v1 again, Decode(v1 bytes) = %+v, %v", got, err)
	}
}

// A version that cannot read the earlier ones is refused, and the registry
// stays as it was: v1 is still current and its bytes still read.
func TestAddRefusesIncompatibleVersion(t *testing.T) {
	const name = "test.evolution.Thing"
	r, v1 := registryWithV1(t)
	for try := range 2 { // refused every time, not only the first
		if err := r.Add(thingV2NoDefault); err == nil {
			t.Fatalf("try %d: Add(v2 with a new field without default) succeeded; v1 bytes could not be read", try)
		}
	}
	if fp, _ := r.Fingerprint(name); !bytes.Equal(fp, v1[2:10]) {
		t.Errorf("after a refused Add, the current fingerprint is % x, want v1's % x", fp, v1[2:10])
	}
	if got, err := r.Decode(name, v1); err != nil || got != (thing1{ID: "t-1"}) {
		t.Errorf("after a refused Add, Decode(v1 bytes) = %+v, %v", got, err)
	}
	if _, again, err := r.Encode(thing1{ID: "t-1"}); err != nil || !bytes.Equal(again, v1) {
		t.Errorf("after a refused Add, Encode(v1 value) = % x, %v; want % x", again, err, v1)
	}

	// AddFS retries files that failed: the refused version must stay
	// refused on the retry even when other files made progress.
	fsys := fstest.MapFS{
		"a_thing_v1.avsc": {Data: []byte(thingV1)},
		"b_thing_v2.avsc": {Data: []byte(thingV2NoDefault)},
		"c_other.avsc":    {Data: []byte(`{"type": "record", "name": "Other", "namespace": "test.evolution", "fields": [{"name": "t", "type": "test.evolution.Thing"}]}`)},
	}
	if err := NewRegistry().AddFS(fsys, "."); err == nil {
		t.Error("AddFS with an incompatible second version of a record succeeded")
	}
}

func TestAddFSResolvesReferencesInAnyOrder(t *testing.T) {
	r := NewRegistry()
	fsys := fstest.MapFS{
		"a_holder.avsc": {Data: []byte(`{"type": "record", "name": "Holder", "namespace": "test.order", "fields": [{"name": "kind", "type": "test.order.Kind"}]}`)},
		"z_kind.avsc":   {Data: []byte(`{"type": "enum", "name": "Kind", "namespace": "test.order", "symbols": ["A", "B"]}`)},
	}
	if err := r.AddFS(fsys, "."); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"test.order.Holder", "test.order.Kind"} {
		if _, ok := r.Schema(n); !ok {
			t.Errorf("%s not registered", n)
		}
	}
	bad := fstest.MapFS{"x.avsc": {Data: []byte(`{"type": "record", "name": "X", "fields": [{"name": "y", "type": "no.such.Y"}]}`)}}
	if err := NewRegistry().AddFS(bad, "."); err == nil || !strings.Contains(err.Error(), "x.avsc") {
		t.Errorf("AddFS with an unresolvable reference = %v, want an error naming x.avsc", err)
	}
	if err := NewRegistry().Add(`"string"`); err == nil {
		t.Error("Add of an unnamed schema succeeded")
	}
}

func TestBindChecksFields(t *testing.T) {
	r := NewRegistry()
	type partial struct {
		CommandID string `avro:"commandId"`
	}
	if err := Bind[partial](r, ReplyName); err == nil || !strings.Contains(err.Error(), "aggregateId") {
		t.Errorf("Bind of a struct missing fields = %v, want an error naming them", err)
	}
	if err := Bind[string](r, ReplyName); err == nil {
		t.Error("Bind of a non-struct succeeded")
	}
	if err := Bind[Reply](r, "decider.Status"); err == nil {
		t.Error("Bind to an enum succeeded")
	}
	if err := Bind[Reply](r, SnapshotName); err == nil {
		t.Error("Bind of Reply to a second record succeeded")
	}
}

// hexOf reads the bytes of a README line such as "c3 01 a5 48 ...".
var hexLine = regexp.MustCompile(`^(?:[0-9a-f]{2} )*[0-9a-f]{2}$`)

// The worked example and the fingerprint table of README.md are what the
// codec writes: the public contract and its documentation cannot drift.
func TestREADMEMatchesCodec(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	r := wireRegistry(t)
	for _, p := range parseAvscFiles(t) {
		name := p.schema.FullName()
		fp, _ := r.Fingerprint(name)
		row := "| `" + name + "` | `" + spaced(fp) + "` |"
		if !bytes.Contains(readme, []byte(row)) {
			t.Errorf("README.md lacks the fingerprint row %s", row)
		}
	}
	deposit, err := r.EncodeJSON("decider.examples.accounts.Deposit", []byte(`{"amount": 100}`))
	if err != nil {
		t.Fatal(err)
	}
	_, reply, err := r.Encode(Reply{CommandID: "cmd-0001", AggregateID: "acc-1", Status: Accepted, Version: 2, Events: 1})
	if err != nil {
		t.Fatal(err)
	}
	_, rejected, err := r.Encode(Reply{CommandID: "cmd-0002", AggregateID: "acc-1", Status: Rejected, Version: 2, Reason: "insufficient_funds"})
	if err != nil {
		t.Fatal(err)
	}
	var blocks []string // hex lines of the README, joined per code block
	var cur []string
	sc := bufio.NewScanner(bytes.NewReader(readme))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if hexLine.MatchString(line) {
			cur = append(cur, line)
			continue
		}
		if len(cur) > 0 {
			blocks = append(blocks, strings.Join(cur, " "))
			cur = nil
		}
	}
	for what, data := range map[string][]byte{"Deposit{amount: 100}": deposit, "the ACCEPTED reply": reply, "the REJECTED reply": rejected} {
		if !slices.Contains(blocks, spaced(data)) {
			t.Errorf("README.md lacks a block with the bytes of %s:\n%s", what, spaced(data))
		}
	}
}

func spaced(b []byte) string {
	h := hex.EncodeToString(b)
	var sb strings.Builder
	for i := 0; i < len(h); i += 2 {
		if i > 0 {
			sb.WriteByte(' ')
		}
		sb.WriteString(h[i : i+2])
	}
	return sb.String()
}

// Decode never panics, whatever the bytes: a command payload is untrusted
// input. What decodes writes back to bytes that decode to the same value,
// and every error wraps one of the errors a caller branches on.
func FuzzDecode(f *testing.F) {
	reply, snapshot := sampleData(f)
	f.Add(reply)
	f.Add(snapshot)
	f.Add(reply[:10])
	f.Add([]byte{})
	f.Add([]byte{0xC3, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x41})
	r := NewRegistry()
	// A window reply whose events (an int) is a 41-bit number: both
	// readers must refuse it.
	big := binary.AppendVarint([]byte{2, 'c', 2, 'a', 0, 0, 0}, 1<<40)
	f.Add(r.AppendSnapshot(nil, "a", 1, 0, nil, 1, [][]byte{big}))
	// A status (an enum: an Avro int) written in six bytes, which hamba
	// refuses, and in five with bits past the 32nd, which it drops.
	f.Add(append(reply[:FramingSize:FramingSize], 2, 'c', 2, 'a', 0x80, 0x80, 0x80, 0x80, 0x80, 0x00, 0, 0, 0))
	f.Add(append(reply[:FramingSize:FramingSize], 2, 'c', 2, 'a', 0x80, 0x80, 0x80, 0x80, 0x10, 0, 0, 0))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, name := range []string{ReplyName, SnapshotName} {
			v, err := r.Decode(name, data)
			if err != nil {
				if !errors.Is(err, ErrFraming) && !errors.Is(err, ErrUnknownSchema) && !errors.Is(err, ErrBody) {
					t.Fatalf("Decode(%s): error %v wraps none of ErrFraming, ErrUnknownSchema, ErrBody", name, err)
				}
				continue
			}
			_, again, err := r.Encode(v)
			if err != nil {
				t.Fatalf("Encode(Decode(%s)) = %v", name, err)
			}
			w, err := r.Decode(name, again)
			if err != nil || !reflect.DeepEqual(v, w) {
				t.Fatalf("%s: %+v re-encoded decodes as %+v, %v", name, v, w, err)
			}
		}
		// The hand-written reply reader agrees with hamba's on the same
		// bytes read as a reply's body.
		if len(data) >= FramingSize {
			body := data[FramingSize:]
			want, werr := r.Decode(ReplyName, append(reply[:FramingSize:FramingSize], body...))
			got, err := ReadReply(body)
			switch {
			case (err == nil) != (werr == nil):
				t.Fatalf("ReadReply error %v, Decode error %v", err, werr)
			case err == nil && !reflect.DeepEqual(got, want):
				t.Fatalf("ReadReply = %+v, Decode = %+v", got, want)
			}
		}
		// And the hand-written writer writes what hamba writes.
		if rep, err := ReadReply(data[min(len(data), FramingSize):]); err == nil {
			checkAppendReply(t, r, rep)
		}
		// The unchecked skips of a dedupe window never read out of bounds,
		// whatever the bytes.
		FindReply(data, "c")
		SkipReplies(data, 2)
		AppendWindowReply(nil, data)
		_, _, _, _ = r.ReadOwnSnapshot(data)
		// The hand-written snapshot reader agrees with hamba's.
		want, werr := r.Decode(SnapshotName, data)
		got, bodies, err := readSnapshotWhole(r, data)
		switch {
		case (err == nil) != (werr == nil):
			t.Fatalf("ReadSnapshot error %v, Decode error %v", err, werr)
		case err == nil && !reflect.DeepEqual(got, want):
			t.Fatalf("ReadSnapshot = %+v, Decode = %+v", got, want)
		case err == nil && len(bodies) != len(got.Recent):
			t.Fatalf("ReadSnapshot: %d reply bodies for %d replies", len(bodies), len(got.Recent))
		}
	})
}

// AppendReply writes the bytes Encode writes, within ReplySize, and
// refuses a status outside the enum.
func TestAppendReply(t *testing.T) {
	r := NewRegistry()
	for _, st := range statuses {
		checkAppendReply(t, r, Reply{CommandID: "cmd-é-1", AggregateID: "acc-1", Status: st, Version: -1 << 40, Reason: "why", Events: -3})
		checkAppendReply(t, r, Reply{Status: st, Version: 1 << 62, Events: 1 << 30})
	}
	if _, err := r.AppendReply(nil, Reply{CommandID: "c", Status: "MAYBE"}); err == nil {
		t.Error("AppendReply wrote a status outside decider.Status")
	}
}

func checkAppendReply(t *testing.T, r *Registry, rep Reply) {
	t.Helper()
	_, want, err := r.Encode(rep)
	if err != nil {
		t.Fatal(err)
	}
	got, err := r.AppendReply([]byte("x"), rep)
	if err != nil || !bytes.Equal(got[1:], want) || len(want) > ReplySize(rep) {
		t.Fatalf("AppendReply(%+v) = % x, %v; Encode: % x (ReplySize %d)", rep, got[1:], err, want, ReplySize(rep))
	}
	// The dedupe window's form is the body of the same reply without its
	// aggregate id.
	rep.AggregateID = ""
	_, wantWindow, err := r.Encode(rep)
	if err != nil {
		t.Fatal(err)
	}
	if window := AppendWindowReply([]byte("y"), want); !bytes.Equal(window[1:], wantWindow[FramingSize:]) {
		t.Fatalf("AppendWindowReply(%+v) = % x, want % x", rep, window[1:], wantWindow[FramingSize:])
	}
}

// An array's block count of MinInt64 is still negative once negated: from
// it hamba grows a slice to a negative length and writes items before its
// start. Decode refuses it before hamba reads it, and so does ReadSnapshot.
func TestMinBlockCount(t *testing.T) {
	r := NewRegistry()
	_, snapshot := sampleData(t)
	data := binary.AppendVarint(snapshot[:FramingSize:FramingSize], 0)     // aggregateId ""
	data = append(binary.AppendVarint(binary.AppendVarint(data, 1), 0), 0) // version, commandOffset, state
	data = binary.AppendVarint(binary.AppendVarint(data, math.MinInt64), 0)
	// Then a block of two replies that hamba would write before the slice.
	for range 2 {
		data = append(data, 2, 'c', 2, 'a', 0, 0, 0, 0)
	}
	data = append(binary.AppendVarint(data, 2), 0)
	if _, _, _, err := r.ReadSnapshot(data); !errors.Is(err, ErrBody) {
		t.Errorf("ReadSnapshot(block count MinInt64) = %v, want ErrBody", err)
	}
	if v, err := r.Decode(SnapshotName, data); !errors.Is(err, ErrBody) {
		t.Errorf("Decode(block count MinInt64) = %+v, %v; want ErrBody", v, err)
	}
	if _, err := r.DecodeJSON(SnapshotName, data); !errors.Is(err, ErrBody) {
		t.Errorf("DecodeJSON(block count MinInt64): %v, want ErrBody", err)
	}
}

// readSnapshotWhole is ReadSnapshot with its replies split by NextReply
// and decoded by ReadReply.
func readSnapshotWhole(r *Registry, data []byte) (Snapshot, [][]byte, error) {
	s, n, all, err := r.ReadSnapshot(data)
	if err != nil {
		return s, nil, err
	}
	if s.Recent != nil {
		return s, nil, fmt.Errorf("ReadSnapshot decoded %d replies", len(s.Recent))
	}
	s.Recent = []Reply{}
	var bodies [][]byte
	for rest := all; len(rest) > 0; {
		b, next, ok := NextReply(rest)
		if !ok {
			return s, nil, fmt.Errorf("NextReply refused reply %d of bodies ReadSnapshot accepted", len(bodies))
		}
		rep, err := ReadReply(b)
		if err != nil {
			return s, nil, fmt.Errorf("a body ReadSnapshot accepted: %w", err)
		}
		// FindReply, which skips replies unchecked, finds a reply of
		// that command id (the first, if several have it).
		if found, ok := FindReply(all, rep.CommandID); !ok {
			return s, nil, fmt.Errorf("FindReply(%q) found nothing", rep.CommandID)
		} else if f, err := ReadReply(found); err != nil || f.CommandID != rep.CommandID {
			return s, nil, fmt.Errorf("FindReply(%q) found %+v, %v", rep.CommandID, f, err)
		}
		s.Recent = append(s.Recent, rep)
		bodies = append(bodies, b)
		rest = next
	}
	if len(bodies) != n {
		return s, nil, fmt.Errorf("ReadSnapshot counted %d replies in bodies of %d", n, len(bodies))
	}
	return s, bodies, nil
}

// registryWithV1 returns a registry with v1 of test.evolution.Thing bound to
// thing1, and bytes written with it.
func registryWithV1(t *testing.T) (*Registry, []byte) {
	t.Helper()
	r := NewRegistry()
	if err := r.Add(thingV1); err != nil {
		t.Fatal(err)
	}
	if err := Bind[thing1](r, "test.evolution.Thing"); err != nil {
		t.Fatal(err)
	}
	_, v1, err := r.Encode(thing1{ID: "t-1"})
	if err != nil {
		t.Fatal(err)
	}
	return r, v1
}

// firstDiff returns the index of the first byte where a and b differ.
func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// Decoded values do not share memory a caller could write over: appending
// to one value's bytes leaves the strings of the next decode alone.
func TestDecodedValuesDoNotAlias(t *testing.T) {
	r := NewRegistry()
	if err := r.Add(`{"type":"record","name":"test.Blob","fields":[{"name":"data","type":"bytes"},{"name":"name","type":"string"}]}`); err != nil {
		t.Fatal(err)
	}
	type blob struct {
		Data []byte `avro:"data"`
		Name string `avro:"name"`
	}
	if err := Bind[blob](r, "test.Blob"); err != nil {
		t.Fatal(err)
	}
	_, enc, err := r.Encode(blob{Data: []byte("ab"), Name: "first"})
	if err != nil {
		t.Fatal(err)
	}
	a, err := r.Decode("test.Blob", enc)
	if err != nil {
		t.Fatal(err)
	}
	b, err := r.Decode("test.Blob", enc)
	if err != nil {
		t.Fatal(err)
	}
	first := a.(blob)
	_ = append(first.Data, "XXXXXXXXXXXXXXXXXXXX"...)
	if got := b.(blob); got.Name != "first" || string(got.Data) != "ab" {
		t.Errorf("after appending to one decoded value, the next reads %+v", got)
	}
}
