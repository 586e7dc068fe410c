package schemas

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/hamba/avro/v2"
)

// EncodeJSON writes the record named name, given as Avro JSON (a JSON object
// with one member per field; a union value is null or {"branch": value}),
// in single-object encoding with the current schema. It needs no Go type:
// it is how tools and the HTTP API send commands they only know by name.
// Fields left out take their schema default.
func (r *Registry) EncodeJSON(name string, data []byte) ([]byte, error) {
	b := r.byName[name]
	if b == nil {
		return nil, fmt.Errorf("encode %q: %w", name, ErrUnknownType)
	}
	d := json.NewDecoder(bytes.NewReader(data))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, fmt.Errorf("encode %s: read JSON: %w", name, err)
	}
	native, err := fromJSON(b.schema, v, name)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", name, err)
	}
	return r.encode(b, native, nil)
}

// fromJSON converts a decoded JSON value to the Go value hamba/avro encodes
// with schema s; path names the value in errors.
func fromJSON(s avro.Schema, v any, path string) (any, error) {
	bad := func() error { return fmt.Errorf("%s: %v is not a valid %s", path, v, s.Type()) }
	switch s := s.(type) {
	case *avro.RecordSchema:
		obj, ok := v.(map[string]any)
		if !ok {
			return nil, bad()
		}
		out := make(map[string]any, len(s.Fields()))
		for _, f := range s.Fields() {
			fv, ok := obj[f.Name()]
			if !ok {
				if !f.HasDefault() {
					return nil, fmt.Errorf("%s.%s: missing field", path, f.Name())
				}
				out[f.Name()] = f.Default()
				continue
			}
			c, err := fromJSON(f.Type(), fv, path+"."+f.Name())
			if err != nil {
				return nil, err
			}
			out[f.Name()] = c
		}
		for k := range obj {
			if !hasField(s, k) {
				return nil, fmt.Errorf("%s.%s: no such field", path, k)
			}
		}
		return out, nil
	case *avro.ArraySchema:
		arr, ok := v.([]any)
		if !ok {
			return nil, bad()
		}
		out := make([]any, len(arr))
		for i, e := range arr {
			c, err := fromJSON(s.Items(), e, fmt.Sprintf("%s[%d]", path, i))
			if err != nil {
				return nil, err
			}
			out[i] = c
		}
		return out, nil
	case *avro.MapSchema:
		obj, ok := v.(map[string]any)
		if !ok {
			return nil, bad()
		}
		out := make(map[string]any, len(obj))
		for k, e := range obj {
			c, err := fromJSON(s.Values(), e, path+"."+k)
			if err != nil {
				return nil, err
			}
			out[k] = c
		}
		return out, nil
	case *avro.UnionSchema:
		return unionFromJSON(s, v, path)
	case *avro.EnumSchema:
		if str, ok := v.(string); ok {
			return str, nil
		}
		return nil, bad()
	case *avro.PrimitiveSchema:
		return primitiveFromJSON(s.Type(), v, bad)
	}
	return nil, fmt.Errorf("%s: schema type %s is not supported in JSON", path, s.Type())
}

func hasField(s *avro.RecordSchema, name string) bool {
	for _, f := range s.Fields() {
		if f.Name() == name {
			return true
		}
	}
	return false
}

func unionFromJSON(s *avro.UnionSchema, v any, path string) (any, error) {
	if v == nil {
		if s.Nullable() {
			return nil, nil
		}
		return nil, fmt.Errorf("%s: null is not a branch of the union", path)
	}
	obj, ok := v.(map[string]any)
	if ok && len(obj) == 1 {
		for branch, bv := range obj {
			if t, _ := s.Types().Get(branch); t != nil {
				return fromJSON(t, bv, path)
			}
		}
	}
	if s.Nullable() { // a bare value for ["null", T]
		for _, t := range s.Types() {
			if t.Type() != avro.Null {
				return fromJSON(t, v, path)
			}
		}
	}
	return nil, fmt.Errorf("%s: a union value is null or {\"branch\": value}", path)
}

func primitiveFromJSON(t avro.Type, v any, bad func() error) (any, error) {
	switch t {
	case avro.Null:
		if v == nil {
			return nil, nil
		}
	case avro.Boolean:
		if b, ok := v.(bool); ok {
			return b, nil
		}
	case avro.String:
		if s, ok := v.(string); ok {
			return s, nil
		}
	case avro.Bytes: // a string of code points 0-255, one a byte
		if s, ok := v.(string); ok {
			b := make([]byte, 0, len(s))
			for _, c := range s {
				if c > 0xff {
					return nil, bad()
				}
				b = append(b, byte(c))
			}
			return b, nil
		}
	case avro.Int, avro.Long:
		if n, ok := v.(json.Number); ok {
			i, err := n.Int64()
			if err != nil {
				return nil, bad()
			}
			if t == avro.Int {
				if int64(int32(i)) != i {
					return nil, bad()
				}
				return int(i), nil
			}
			return i, nil
		}
	case avro.Float, avro.Double:
		if n, ok := v.(json.Number); ok {
			f, err := n.Float64()
			if err != nil {
				return nil, bad()
			}
			if t == avro.Float {
				return float32(f), nil
			}
			return f, nil
		}
	}
	return nil, bad()
}

// bytesToJSON returns v, a value decoded without a Go type, with every
// []byte in it replaced by the Avro JSON form of bytes: a string whose code
// points 0-255 are the bytes.
func bytesToJSON(v any) any {
	switch v := v.(type) {
	case []byte:
		r := make([]rune, len(v))
		for i, b := range v {
			r[i] = rune(b)
		}
		return string(r)
	case map[string]any:
		for k, e := range v {
			v[k] = bytesToJSON(e)
		}
	case []any:
		for i, e := range v {
			v[i] = bytesToJSON(e)
		}
	}
	return v
}
