//go:build linux

package channel

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

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

// BenchmarkJSONValid is the ceiling that checking JSON puts on large
// values, which Send and Recv of a json.RawMessage do once each, one on
// each side: encoding/json's scanner (json.Valid) against the package's
// validJSON, over the string of BenchmarkThroughput and over a document of
// numbers, keys and nesting.
func BenchmarkJSONValid(b *testing.B) {
	doc, _ := json.Marshal(map[string]any{"rows": func() (rows []any) {
		for i := range 4000 {
			rows = append(rows, map[string]any{"id": i, "name": fmt.Sprintf("row %d", i), "score": float64(i) / 7, "tags": []string{"a", "bc"}, "ok": i%2 == 0, "next": nil})
		}
		return rows
	}()})
	values := []struct {
		name string
		v    []byte
	}{{"string-1MiB", jsonString(1 << 20)}, {"string-16MiB", jsonString(16 << 20)}, {fmt.Sprintf("rows-%dKiB", len(doc)>>10), doc}}
	for _, val := range values {
		for _, impl := range []struct {
			name  string
			valid func([]byte) bool
		}{{"encoding-json", json.Valid}, {"channel", validJSON}} {
			b.Run("value="+val.name+"/impl="+impl.name, func(b *testing.B) {
				b.SetBytes(int64(len(val.v)))
				for i := 0; i < b.N; i++ {
					if !impl.valid(val.v) {
						b.Fatal("invalid")
					}
				}
			})
		}
	}
}
