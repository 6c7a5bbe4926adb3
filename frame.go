//go:build linux

// Wire format. Everything here is pure encoding and parsing, without
// syscalls, so that it can be fuzzed.
//
// A message is one JSON value (encoding/json, RFC 8259, UTF-8) sent over a
// connected AF_UNIX SOCK_SEQPACKET socket:
//
//	first datagram:        length (8 bytes, unsigned, little-endian) | JSON bytes
//	continuation datagram: JSON bytes (no header)
//
// The length counts the JSON bytes only, not the header, and is at most
// 64 MiB (67,108,864). When the JSON fits in one datagram (8 + length bytes)
// the message is that single datagram: this is the framing of wormhole-rs and
// tiny-nix-ipc on little-endian machines. A larger message continues in as
// many datagrams as the sender likes, each carrying only JSON bytes, until
// length bytes have arrived; the receiver reassembles them whatever the split.
// No datagram is ever empty. The message's file descriptors (SCM_RIGHTS,
// 0 to 253 of them) travel on the first datagram only; fds on a continuation
// datagram are a protocol error.
//
// A datagram shorter than the header, a length over the maximum, a datagram
// holding more JSON bytes than the length leaves to come, an empty
// continuation datagram, fds on a continuation datagram, and a datagram
// truncated by the receiver are protocol errors: the receiving side stops.

package channel

import (
	"encoding/binary"
	"errors"
	"fmt"
)

const (
	headerLen = 8

	// maxLen is the largest JSON value one message may carry.
	maxLen = 64 << 20
)

// errFrame is wrapped by every protocol error. It stays unexported: a caller
// has nothing to do about a broken peer but close the Conn.
var errFrame = errors.New("channel: malformed frame")

// putHeader writes the header for n bytes of JSON into b[:headerLen].
func putHeader(b []byte, n int) {
	binary.LittleEndian.PutUint64(b, uint64(n))
}

// parseHeader reads the first datagram of a message, d, and returns the
// length of the whole JSON value it starts.
func parseHeader(d []byte) (int, error) {
	if len(d) < headerLen {
		return 0, fmt.Errorf("%w: datagram of %d bytes is shorter than the %d-byte header", errFrame, len(d), headerLen)
	}
	n := binary.LittleEndian.Uint64(d)
	if n > maxLen {
		return 0, fmt.Errorf("%w: length %d is over the limit of %d bytes", errFrame, n, maxLen)
	}
	if got := uint64(len(d) - headerLen); got > n {
		return 0, fmt.Errorf("%w: datagram carries %d bytes of a %d-byte value", errFrame, got, n)
	}
	return int(n), nil
}

// checkDatagram checks the rest of what came with one datagram of a message:
// n bytes into room bytes of buffer, with fds files; truncated if the kernel
// cut it to fit. first says whether it starts the message (parseHeader
// checks the first's bytes).
func checkDatagram(first bool, n, room, fds int, truncated bool) error {
	switch {
	case truncated:
		return fmt.Errorf("%w: datagram longer than the %d bytes due", errFrame, room)
	case !first && fds > 0:
		return fmt.Errorf("%w: file descriptors on a continuation datagram", errFrame)
	case !first && n == 0:
		return fmt.Errorf("%w: empty datagram", errFrame)
	}
	return nil
}
