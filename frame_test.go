//go:build linux

package channel

import (
	"encoding/binary"
	"errors"
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

// FuzzCheckDatagram checks that checkDatagram refuses exactly a truncated
// datagram, and an empty one or one with files after the first.
func FuzzCheckDatagram(f *testing.F) {
	f.Add(true, 10, 100, 3, false)
	f.Add(false, 0, 100, 0, false)
	f.Add(false, 5, 100, 1, false)
	f.Add(false, 5, 5, 0, true)
	f.Fuzz(func(t *testing.T, first bool, n, room, fds int, truncated bool) {
		if n < 0 || fds < 0 {
			return
		}
		err := checkDatagram(first, n, room, fds, truncated)
		bad := truncated || !first && (n == 0 || fds > 0)
		if bad != (err != nil) || err != nil && !errors.Is(err, errFrame) {
			t.Fatalf("checkDatagram(%v, %d, %d, %d, %v) = %v, want an error: %v", first, n, room, fds, truncated, err, bad)
		}
	})
}
