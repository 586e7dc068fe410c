package schemas

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"path"
	"reflect"
	"slices"
	"strings"
	"sync"

	"github.com/hamba/avro/v2"
	"github.com/hamba/avro/v2/soe"
	"github.com/modern-go/reflect2"
)

// Errors a caller branches on when a payload cannot be read. Each is wrapped
// with the detail of what was wrong.
var (
	// ErrFraming: the payload is not Avro single-object encoding (too short
	// or wrong magic bytes).
	ErrFraming = errors.New("not avro single-object encoding")
	// ErrUnknownSchema: the payload's writer fingerprint names no schema
	// the registry knows.
	ErrUnknownSchema = errors.New("unknown writer schema fingerprint")
	// ErrUnknownType: the Avro full name is not bound to a Go type.
	ErrUnknownType = errors.New("unknown type")
	// ErrBody: the binary body does not decode with the writer schema.
	ErrBody = errors.New("body does not decode")
)

// Registry knows Avro schemas by full name and by fingerprint, and which Go
// type each record name decodes into. It is filled once at start-up (Add,
// AddFS, Bind) and is then safe for concurrent use by any number of
// goroutines; adding to it after it is in use is a data race.
//
// Several schemas may share a full name: the last one added is the current
// schema (the one values are written with); earlier ones stay known by their
// fingerprint, so bytes written by an older version are still read, resolved
// into the current Go type (Avro schema evolution).
type Registry struct {
	api   avro.API
	cache *avro.SchemaCache
	// Readers and writers are reused: a fresh hamba Reader allocates a
	// 1 KiB slab for the first string it reads, a fresh Writer grows its
	// buffer from nothing, and on the hot path (a command, a snapshot and
	// a reply per command) those allocations were a quarter of the CPU.
	readers sync.Pool // of *avro.Reader
	writers sync.Pool // of *avro.Writer
	byName  map[string]*binding
	byFP    map[uint64]avro.NamedSchema
	byType  map[reflect.Type]*binding
}

// binding is one Avro record name: its current schema, its Go type if bound,
// and the resolved reader schemas for older writer schemas of the same name.
type binding struct {
	name     string
	schema   avro.NamedSchema
	current  reading // how to read schema
	header   []byte  // magic + fingerprint of schema
	fp       uint64
	goType   reflect.Type
	encoder  avro.ValEncoder // of schema from goType, once bound
	decode   func(how reading, body []byte) (any, error)
	resolved map[uint64]reading // writer fingerprint → how to read it
}

// compile makes, for a bound binding, the encoder of its schema from its
// Go type and the decoders of its readings into that type, so that a value
// is written or read without looking them up. (hamba's WriteVal and
// ReadVal look them up for every value, in a sync.Map keyed by the
// schema's fingerprint and the type: 2% of the worker's CPU flat out.)
func (b *binding) compile(api avro.API) {
	if b.goType == nil {
		return
	}
	b.encoder = api.EncoderOf(b.schema, reflect2.Type2(b.goType))
	ptr := reflect2.Type2(reflect.PointerTo(b.goType))
	b.current.decoder = api.DecoderOf(b.schema, ptr)
	for fp, how := range b.resolved {
		how.decoder = api.DecoderOf(how.schema, ptr)
		b.resolved[fp] = how
	}
}

// reading is a schema to read bodies with (a record's current schema, or
// its resolution from an earlier writer schema), and whether its values
// hold bytes (see readBody), found when the schema is added: looked up
// for each body in a sync.Map keyed by the schema, it hashed an interface
// for every command, state and reply read.
type reading struct {
	schema    avro.Schema
	withBytes bool
	decoder   avro.ValDecoder // into the binding's Go type, once bound (see binding.compile)
}

func readingOf(s avro.Schema) reading {
	return reading{schema: s, withBytes: hasBytes(s, map[string]bool{})}
}

// maxArrayItems bounds the items of one decoded array. The decoder allocates
// an array block's items at once, so without a bound a few bytes claiming a
// block of 2^40 items kill the process (running out of memory is not a
// panic). Each item takes at least one byte (but for null and empty records),
// so this is more than a 1 MiB payload can hold.
const maxArrayItems = 1 << 20

// maxBytes bounds one decoded string or bytes value: more than any Kafka
// record carries (hamba's default, 1 MiB, is less than a snapshot may hold).
const maxBytes = 16 << 20

// NewRegistry returns a registry that already holds decider's own schemas
// (decider.Reply, decider.Status, decider.Snapshot) bound to Reply and
// Snapshot.
func NewRegistry() *Registry {
	r := &Registry{
		api:    avro.Config{MaxSliceAllocSize: maxArrayItems, MaxByteSliceSize: maxBytes}.Freeze(),
		cache:  &avro.SchemaCache{},
		byName: map[string]*binding{},
		byFP:   map[uint64]avro.NamedSchema{},
		byType: map[reflect.Type]*binding{},
	}
	if err := r.AddFS(Files, "."); err != nil {
		panic(fmt.Sprintf("decider's own schemas: %v", err)) // a build defect, caught by every test
	}
	if err := Bind[Reply](r, ReplyName); err != nil {
		panic(err)
	}
	if err := Bind[Snapshot](r, SnapshotName); err != nil {
		panic(err)
	}
	return r
}

// Add parses one .avsc document (a named record, enum or fixed) and makes it
// the current schema of its full name. Names it references must have been
// added before. A schema that cannot read every earlier version of its name
// is refused, and the registry is left as it was.
func (r *Registry) Add(schemaJSON string) error {
	// Parse into a copy of the cache: a refused schema leaves no trace in it.
	cache := &avro.SchemaCache{}
	cache.AddAll(r.cache)
	s, err := avro.ParseWithCache(schemaJSON, "", cache)
	if err != nil {
		return fmt.Errorf("parse schema: %w", err)
	}
	named, ok := s.(avro.NamedSchema)
	if !ok {
		return fmt.Errorf("schema of type %s has no name: only named schemas can be registered", s.Type())
	}
	fp, err := soe.ComputeFingerprint(named)
	if err != nil {
		return fmt.Errorf("fingerprint %s: %w", named.FullName(), err)
	}
	key := binary.LittleEndian.Uint64(fp)
	if _, dup := r.byFP[key]; dup {
		return nil // the same schema twice is harmless
	}
	resolved, err := r.resolve(named, key)
	if err != nil {
		return err
	}
	r.cache = cache
	r.byFP[key] = named
	b := r.byName[named.FullName()]
	if b == nil {
		b = &binding{name: named.FullName()}
		r.byName[b.name] = b
	}
	b.schema = named
	b.current = readingOf(named)
	b.fp = key
	b.header = append(slices.Clip(soe.Magic), fp...)
	b.resolved = resolved
	b.compile(r.api)
	return nil
}

// AddFS adds every *.avsc file in dir of fsys. Files may reference each
// other's names in any order: a file whose references are not yet known is
// retried after the others.
func (r *Registry) AddFS(fsys fs.FS, dir string) error {
	names, err := fs.Glob(fsys, path.Join(dir, "*.avsc"))
	if err != nil {
		return fmt.Errorf("list schemas in %s: %w", dir, err)
	}
	pending := map[string]string{}
	for _, n := range names {
		b, err := fs.ReadFile(fsys, n)
		if err != nil {
			return fmt.Errorf("read schema %s: %w", n, err)
		}
		pending[n] = string(b)
	}
	for len(pending) > 0 {
		var errs []error
		progress := false
		for _, n := range slices.Sorted(maps.Keys(pending)) {
			if err := r.Add(pending[n]); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", n, err))
				continue
			}
			delete(pending, n)
			progress = true
		}
		if !progress {
			return errors.Join(errs...)
		}
	}
	return nil
}

// resolve computes, for every known writer schema of reader's name but the
// one with fingerprint fp, the schema that reads it into reader.
func (r *Registry) resolve(reader avro.NamedSchema, fp uint64) (map[uint64]reading, error) {
	resolved := map[uint64]reading{}
	sc := avro.NewSchemaCompatibility()
	for wfp, w := range r.byFP {
		if w.FullName() != reader.FullName() || wfp == fp {
			continue
		}
		res, err := sc.Resolve(reader, w)
		if err != nil {
			return nil, fmt.Errorf("schema %s: an earlier version (fingerprint %016x) cannot be read by the current one: %w", reader.FullName(), wfp, err)
		}
		resolved[wfp] = readingOf(res)
	}
	return resolved, nil
}

// Bind makes values of Go type T encode with, and the record named name
// decode into, T. T is a struct with `avro:"field"` tags. Bind fails when
// the name is unknown, is not a record, or T does not fit the schema.
func Bind[T any](r *Registry, name string) error {
	b := r.byName[name]
	if b == nil {
		return fmt.Errorf("bind %T: %w: no schema named %q", *new(T), ErrUnknownType, name)
	}
	if b.schema.Type() != avro.Record {
		return fmt.Errorf("bind %T: %s is a %s, not a record", *new(T), name, b.schema.Type())
	}
	t := reflect.TypeFor[T]()
	if other, ok := r.byType[t]; ok && other != b {
		return fmt.Errorf("bind %s: already bound to %s", t, other.name)
	}
	if err := fits(t, b.schema.(*avro.RecordSchema)); err != nil {
		return fmt.Errorf("bind %s to %s: %w", t, name, err)
	}
	b.goType = t
	b.decode = func(how reading, body []byte) (any, error) {
		var v T
		err := r.readBody(how, body, &v, how.decoder)
		return v, err
	}
	b.compile(r.api)
	r.byType[t] = b
	return nil
}

// fits checks that struct t has a field for every field of the record, by
// its `avro` tag or, without one, its Go name. Field types are checked by
// the first encode.
func fits(t reflect.Type, rec *avro.RecordSchema) error {
	if t.Kind() != reflect.Struct {
		return fmt.Errorf("%s is not a struct", t)
	}
	have := map[string]bool{}
	for i := range t.NumField() {
		f := t.Field(i)
		name := f.Name
		if tag, ok := f.Tag.Lookup("avro"); ok {
			name, _, _ = strings.Cut(tag, ",")
		}
		have[name] = true
	}
	var missing []string
	for _, f := range rec.Fields() {
		if !have[f.Name()] {
			missing = append(missing, f.Name())
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("no Go field for record fields %v (tag them `avro:\"name\"`)", missing)
	}
	return nil
}

// Encode writes v in single-object encoding with the current schema of the
// record its Go type is bound to, and returns that record's full name.
func (r *Registry) Encode(v any) (name string, data []byte, err error) {
	t := reflect.TypeOf(v)
	b := r.byType[t]
	if b == nil {
		return "", nil, fmt.Errorf("encode %T: %w: no schema is bound to this Go type", v, ErrUnknownType)
	}
	enc := b.encoder
	if t != b.goType { // its name was bound to another type since
		enc = nil
	}
	data, err = r.encode(b, v, enc)
	return b.name, data, err
}

// encode writes v in single-object encoding with b's schema; enc, if not
// nil, is that schema's encoder from v's type (see binding.compile).
func (r *Registry) encode(b *binding, v any, enc avro.ValEncoder) ([]byte, error) {
	w, _ := r.writers.Get().(*avro.Writer)
	if w == nil {
		w = avro.NewWriter(nil, 512, avro.WithWriterConfig(r.api))
	}
	defer r.writers.Put(w)
	w.Reset(nil)
	w.Error = nil
	_, _ = w.Write(b.header)
	if enc != nil {
		enc.Encode(reflect2.PtrOf(v), w)
	} else {
		w.WriteVal(b.schema, v)
	}
	if w.Error != nil {
		return nil, fmt.Errorf("encode %s: %w", b.name, w.Error)
	}
	return bytes.Clone(w.Buffer()), nil
}

// Decode reads single-object encoded data as the record named name and
// returns a value of the Go type bound to it (not a pointer). The writer
// schema is found by the fingerprint in data; it must be a known version of
// name. Errors wrap ErrUnknownType, ErrFraming, ErrUnknownSchema or ErrBody.
func (r *Registry) Decode(name string, data []byte) (any, error) {
	b := r.byName[name]
	if b == nil || b.decode == nil {
		return nil, fmt.Errorf("decode %q: %w", name, ErrUnknownType)
	}
	how, body, err := r.writerSchema(b, data)
	if err != nil {
		return nil, err
	}
	v, err := b.decode(how, body)
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w: %w", name, ErrBody, err)
	}
	return v, nil
}

// DecodeJSON reads single-object encoded data as the record named name and
// returns it as Avro JSON, the form EncodeJSON reads: an object with one
// member per field of the current schema, a nullable union's value bare, any
// other union's as {"full.Name": value}, bytes as a string of code points
// 0-255. It needs no Go
// type. Errors are Decode's.
func (r *Registry) DecodeJSON(name string, data []byte) ([]byte, error) {
	b := r.byName[name]
	if b == nil {
		return nil, fmt.Errorf("decode %q: %w", name, ErrUnknownType)
	}
	how, body, err := r.writerSchema(b, data)
	if err != nil {
		return nil, err
	}
	var v any
	if err := r.readBody(how, body, &v, nil); err != nil {
		return nil, fmt.Errorf("decode %s: %w: %w", name, ErrBody, err)
	}
	out, err := json.Marshal(bytesToJSON(v))
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", name, err)
	}
	return out, nil
}

// writerSchema returns how to read data's body, as the record of b: with
// b's own schema or its resolution from the writer schema data names.
func (r *Registry) writerSchema(b *binding, data []byte) (reading, []byte, error) {
	fp, body, err := splitHeader(data)
	if err != nil {
		return reading{}, nil, fmt.Errorf("decode %s: %w", b.name, err)
	}
	if fp == b.fp {
		return b.current, body, checked(b, b.schema, body)
	}
	res, ok := b.resolved[fp]
	if !ok {
		if w, known := r.byFP[fp]; known {
			return reading{}, nil, fmt.Errorf("decode %s: %w: payload was written as %s", b.name, ErrUnknownSchema, w.FullName())
		}
		return reading{}, nil, fmt.Errorf("decode %s: %w %016x", b.name, ErrUnknownSchema, fp)
	}
	return res, body, checked(b, r.byFP[fp], body)
}

// checked is checkBody's error, for decoding body as b.
func checked(b *binding, writer avro.Schema, body []byte) error {
	if err := checkBody(writer, body); err != nil {
		return fmt.Errorf("decode %s: %w: %w", b.name, ErrBody, err)
	}
	return nil
}

// readBody reads body, all of it, as one value of how's schema into v, a
// pointer; dec, if not nil, is how's decoder into v's type (see
// binding.compile).
//
// A pooled reader hands out the rest of its string slab to later decodes;
// strings cannot be written, but a bytes value could be appended to over
// another decode's strings, so a schema with bytes gets a reader of its own.
func (r *Registry) readBody(how reading, body []byte, v any, dec avro.ValDecoder) error {
	var rd *avro.Reader
	if how.withBytes {
		rd = avro.NewReader(nil, 0, avro.WithReaderConfig(r.api))
	} else {
		if rd, _ = r.readers.Get().(*avro.Reader); rd == nil {
			rd = avro.NewReader(nil, 0, avro.WithReaderConfig(r.api))
		}
		defer func() {
			rd.Reset(nil) // holds on to no caller's bytes; what it read into v stays v's
			r.readers.Put(rd)
		}()
	}
	rd.Error = nil
	rd.Reset(body)
	if dec != nil {
		dec.Decode(reflect2.PtrOf(v), rd)
	} else {
		rd.ReadVal(how.schema, v)
	}
	if rd.Error != nil { // io.EOF included: the body is truncated
		return rd.Error
	}
	if rd.Peek(); rd.Error == nil {
		return errors.New("trailing bytes after the record")
	}
	return nil
}

// splitHeader returns the writer fingerprint and the body of a
// single-object encoded payload.
func splitHeader(data []byte) (uint64, []byte, error) {
	if len(data) < 10 || data[0] != soe.Magic[0] || data[1] != soe.Magic[1] {
		return 0, nil, fmt.Errorf("%w: %d bytes starting %x", ErrFraming, len(data), data[:min(len(data), 2)])
	}
	return binary.LittleEndian.Uint64(data[2:10]), data[10:], nil
}

// Schema returns the current schema of a full name.
func (r *Registry) Schema(name string) (avro.NamedSchema, bool) {
	b := r.byName[name]
	if b == nil {
		return nil, false
	}
	return b.schema, true
}

// Bound reports whether name is bound to a Go type, and which.
func (r *Registry) Bound(name string) (reflect.Type, bool) {
	b := r.byName[name]
	if b == nil || b.goType == nil {
		return nil, false
	}
	return b.goType, true
}

// Fingerprint returns the CRC-64-AVRO fingerprint of the current schema of
// name, as the 8 little-endian bytes that follow the magic on the wire.
func (r *Registry) Fingerprint(name string) ([]byte, bool) {
	b := r.byName[name]
	if b == nil {
		return nil, false
	}
	return slices.Clone(b.header[2:]), true
}

// ShortName returns the last dot-separated part of an Avro full name.
func ShortName(fullName string) string {
	return fullName[strings.LastIndexByte(fullName, '.')+1:]
}

// hasBytes reports whether values of s can hold a bytes or fixed value;
// seen guards against recursive named types.
func hasBytes(s avro.Schema, seen map[string]bool) bool {
	switch s := s.(type) {
	case *avro.PrimitiveSchema:
		return s.Type() == avro.Bytes
	case *avro.FixedSchema:
		return true
	case *avro.RefSchema:
		return hasBytes(s.Schema(), seen)
	case *avro.RecordSchema:
		if seen[s.FullName()] {
			return false
		}
		seen[s.FullName()] = true
		for _, f := range s.Fields() {
			if hasBytes(f.Type(), seen) {
				return true
			}
		}
	case *avro.ArraySchema:
		return hasBytes(s.Items(), seen)
	case *avro.MapSchema:
		return hasBytes(s.Values(), seen)
	case *avro.UnionSchema:
		for _, t := range s.Types() {
			if hasBytes(t, seen) {
				return true
			}
		}
	}
	return false
}
