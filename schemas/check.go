package schemas

import (
	"errors"

	"github.com/hamba/avro/v2"
)

// checkBody walks body as writer writes it and refuses what hamba must not
// be given: an array or map block count of MinInt64 (see blockCount), from
// which hamba grows a slice to a negative length and writes items before
// its start (memory corruption, found by FuzzDecode).
// It also bounds nesting. It checks lengths and indexes as it goes but is
// not a full validation: hamba still reads the body afterwards.
func checkBody(writer avro.Schema, body []byte) error {
	d := avroReader{buf: body}
	d.skip(writer, 0)
	return d.err
}

// maxNesting bounds how deep checkBody follows arrays, maps, unions and
// records into each other.
const maxNesting = 1000

// skip reads past one value of schema s.
func (d *avroReader) skip(s avro.Schema, depth int) {
	if d.err != nil {
		return
	}
	if depth > maxNesting {
		d.err = errors.New("values nested too deep")
		return
	}
	switch s := s.(type) {
	case *avro.RefSchema:
		d.skip(s.Schema(), depth+1)
	case *avro.RecordSchema:
		for _, f := range s.Fields() {
			d.skip(f.Type(), depth+1)
		}
	case *avro.UnionSchema:
		types := s.Types()
		if i := d.long(); i >= 0 && i < int64(len(types)) {
			d.skip(types[i], depth+1)
		} else {
			d.fail()
		}
	case *avro.ArraySchema:
		d.skipBlocks(s.Items(), false, depth)
	case *avro.MapSchema:
		d.skipBlocks(s.Values(), true, depth)
	case *avro.EnumSchema:
		d.int()
	case *avro.FixedSchema:
		d.take(s.Size())
	case *avro.PrimitiveSchema:
		switch s.Type() {
		case avro.Boolean:
			d.take(1)
		case avro.Int:
			d.int()
		case avro.Long:
			d.long()
		case avro.Float:
			d.take(4)
		case avro.Double:
			d.take(8)
		case avro.Bytes, avro.String:
			d.bytes()
		}
	}
}

// skipBlocks reads past the blocks of an array of items, or of a map of
// them (each item after its key).
func (d *avroReader) skipBlocks(items avro.Schema, keyed bool, depth int) {
	for d.err == nil {
		n := d.blockCount()
		if n == 0 {
			return
		}
		for i := int64(0); i < n && d.err == nil; i++ {
			at := d.pos
			if keyed {
				d.bytes()
			}
			d.skip(items, depth+1)
			if d.pos == at { // items of no bytes (null, empty records): the rest take none either
				break
			}
		}
	}
}

// take reads past n bytes.
func (d *avroReader) take(n int) {
	if n < 0 || n > len(d.buf)-d.pos {
		d.fail()
		return
	}
	d.pos += n
}
