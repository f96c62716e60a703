package install

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// object is a JSON object whose members keep their order and their values'
// exact text, so that a configuration file is rewritten with only the
// change nftguard makes.
type object []member

type member struct {
	key   string
	value json.RawMessage
}

// parseObject decodes a JSON object, keeping its members' order and values.
func parseObject(b []byte) (object, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, errors.New("not a JSON object")
	}
	var o object
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, ok := t.(string)
		if !ok {
			return nil, fmt.Errorf("unexpected %v where a key belongs", t)
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("member %q: %w", key, err)
		}
		o = append(o, member{key: key, value: v})
	}
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the JSON object")
	}
	return o, nil
}

// get returns the value of key; like encoding/json, the last of duplicate
// keys counts.
func (o object) get(key string) (json.RawMessage, bool) {
	for i := len(o) - 1; i >= 0; i-- {
		if o[i].key == key {
			return o[i].value, true
		}
	}
	return nil, false
}

// getString returns the value of key if it is a string.
func (o object) getString(key string) string {
	v, _ := o.get(key)
	var s string
	_ = json.Unmarshal(v, &s)
	return s
}

// set replaces the value of key, or appends the member.
func (o object) set(key string, value json.RawMessage) object {
	for i := len(o) - 1; i >= 0; i-- {
		if o[i].key == key {
			out := append(object(nil), o...)
			out[i].value = value
			return out
		}
	}
	return append(append(object(nil), o...), member{key: key, value: value})
}

// marshal encodes the object compactly.
func (o object) marshal() []byte {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, m := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(m.key)
		b.Write(k)
		b.WriteByte(':')
		b.Write(m.value)
	}
	b.WriteByte('}')
	return b.Bytes()
}

// file encodes the object as a configuration file: indented, one final
// newline.
func (o object) file() []byte {
	var b bytes.Buffer
	if err := json.Indent(&b, o.marshal(), "", "  "); err != nil {
		// Every value came from the decoder or json.Marshal.
		panic(fmt.Sprintf("re-encoding a JSON object: %v", err))
	}
	b.WriteByte('\n')
	return b.Bytes()
}

// mustRaw encodes v, which cannot fail for the strings, booleans and
// slices of raw values it is used with.
func mustRaw(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("encoding %T: %v", v, err))
	}
	return b
}
