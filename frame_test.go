//go:build linux

package channel

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"strings"
	"testing"
)

func TestParseHeader(t *testing.T) {
	tests := []struct {
		name    string
		d       []byte
		want    int
		wantErr bool
	}{
		{"header only", frame(0, ""), 0, false},
		{"whole value", frame(3, "abc"), 3, false},
		{"first part", frame(10, "abc"), 10, false},
		{"maximum", frame(maxLen, ""), maxLen, false},
		{"empty", nil, 0, true},
		{"7 bytes", make([]byte, 7), 0, true},
		{"over the maximum", frame(maxLen+1, ""), 0, true},
		{"2^64-1", binary.LittleEndian.AppendUint64(nil, 1<<64-1), 0, true},
		{"2^63", binary.LittleEndian.AppendUint64(nil, 1<<63), 0, true},
		{"more than the length", frame(2, "abc"), 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseHeader(tt.d)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("parseHeader(%q) = %d, %v; want %d, error %v", tt.d, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

// FuzzParseHeader checks that parseHeader accepts exactly the first
// datagrams the format allows, and that what putHeader writes parses back.
func FuzzParseHeader(f *testing.F) {
	f.Add(frame(3, "abc"))
	f.Add(frame(10, "abc"))
	f.Add([]byte{1, 2, 3})
	f.Add(binary.LittleEndian.AppendUint64(nil, 1<<64-1))
	f.Fuzz(func(t *testing.T, d []byte) {
		n, err := parseHeader(d)
		valid := len(d) >= headerLen &&
			binary.LittleEndian.Uint64(d) <= maxLen &&
			uint64(len(d)-headerLen) <= binary.LittleEndian.Uint64(d)
		if valid != (err == nil) {
			t.Fatalf("parseHeader(%q) error = %v, want valid = %v", d, err, valid)
		}
		if err != nil {
			return
		}
		if n < len(d)-headerLen || n > maxLen {
			t.Fatalf("parseHeader(%q) = %d, outside [%d, %d]", d, n, len(d)-headerLen, maxLen)
		}
		b := make([]byte, headerLen)
		putHeader(b, n)
		if m, err := parseHeader(b); m != n || err != nil {
			t.Fatalf("parseHeader(putHeader(%d)) = %d, %v", n, m, err)
		}
	})
}

func TestValidJSON(t *testing.T) {
	for _, s := range []string{
		``, ` `, `"`, `"\`, `"\u12"`, `"\u123g"`, `"\x"`, "\"\x1f\"", "\"\x7f\xff\"",
		`"0123456789abcdef\"0123456789"`, `"0123456789abcdef\\"`, `"0123456789abcdef` + "\n" + `"`,
		`0`, `-0`, `01`, `-`, `1.`, `1.5`, `1e`, `1e+`, `1E-7`, `-12.5e10`, `.5`, `+1`,
		`true`, `tru`, `truex`, `false`, `null`, `nul`, `nulll`,
		`[]`, `[ ]`, `[1,]`, `[,1]`, `[1 2]`, `[1,2]`, `[[[]]]`, `[[]`, `[]]`,
		`{}`, `{ }`, `{"a":1}`, `{"a" : [ {"b":null} ] }`, `{"a"}`, `{"a":}`, `{a:1}`, `{"a":1,}`, `{,}`, `{"a":1 "b":2}`,
		" \t\r\n{\"a\":\"b\"}\n", `1 2`, `{}{}`, "\v1", `[1]x`,
		strings.Repeat("[", 600) + strings.Repeat("]", 600),
		strings.Repeat("[", 512) + strings.Repeat("]", 512),
		strings.Repeat("[", 10001) + strings.Repeat("]", 10001),
	} {
		b := []byte(s)
		want := json.Valid(b)
		if got := validJSON(b); got != want && !(want && strings.Count(s, "[") > 500) {
			t.Errorf("validJSON(%.40q) = %v, json.Valid says %v", s, got, want)
		}
	}
}

// TestSpecial puts each byte value in each of the 8 lanes of a word of
// other bytes, and checks special against the bytes one by one.
func TestSpecial(t *testing.T) {
	for c := range 256 {
		for lane := range 8 {
			for _, fill := range []byte{'x', ' ', '!', '#', '[', ']', 0x7f, 0x80, 0xff} {
				w := bytes.Repeat([]byte{fill}, 8)
				w[lane] = byte(c)
				want := false
				for _, b := range w {
					want = want || b == '"' || b == '\\' || b < 0x20
				}
				if got := special(binary.LittleEndian.Uint64(w)) != 0; got != want {
					t.Fatalf("special(% x) != 0 is %v, want %v", w, got, want)
				}
			}
		}
	}
}

// FuzzValidJSON checks that validJSON agrees with json.Valid, except that
// it may leave values nested over 512 deep to json.Valid; what matters is
// that it never accepts what json.Valid refuses.
func FuzzValidJSON(f *testing.F) {
	for _, s := range []string{`{"a":[1,-2.5e3,"x\u00e9\n",true,false,null,{}]}`, `"0123456789abcdef"`, `[1,]`, `"\u00"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, want := validJSON(b), json.Valid(b)
		if got && !want {
			t.Fatalf("validJSON(%q) = true, json.Valid = false", b)
		}
		if !got && want && bytes.Count(b, []byte("["))+bytes.Count(b, []byte("{")) <= 512 {
			t.Fatalf("validJSON(%q) = false, json.Valid = true", b)
		}
	})
}
