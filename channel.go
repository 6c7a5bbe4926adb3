//go:build linux

// Package channel sends JSON values and open files between Linux processes,
// over one end of an anonymous AF_UNIX SOCK_SEQPACKET socketpair.
//
// A program starts itself again as a child, and talks to it:
//
//	func init() {
//		channel.Register("upper", func(c *channel.Conn) error {
//			var s string
//			if err := c.Recv(&s); err != nil {
//				return err
//			}
//			return c.Send(strings.ToUpper(s))
//		})
//	}
//
//	func main() {
//		channel.Dispatch() // in the child: runs "upper" and exits
//		cmd := channel.Command("upper")
//		c, err := channel.Start(cmd)
//		if err != nil {
//			log.Fatal(err)
//		}
//		var reply string
//		if err := c.Send("hello"); err == nil {
//			err = c.Recv(&reply) // "HELLO"
//		}
//		c.Close() // then wait: the child has returned at io.EOF
//		cmd.Wait()
//	}
//
// [Pair] makes both ends in one process, and [FileConn] adopts any connected
// SOCK_SEQPACKET socket, for example one accepted at a socket path.
//
// # What to rely on
//
// A [Conn] holds three descriptors, all made with it, and leaves the socket
// as it found it: its mode, blocking or not, and its options. It sends no
// signal and starts no goroutine. [Conn.Close] and deadlines end a blocked
// call within about a millisecond; a [Conn.Recv] that has waited more than
// a few milliseconds holds no thread.
//
// # Who owns which descriptor
//
// A [Conn] owns its socket; [Conn.Close] closes it. Files passed to
// [Conn.SendWithFds] stay the caller's: the kernel duplicates them into the
// message and the caller closes its own copies when it likes. Files returned
// by [Conn.RecvWithFds] are the caller's to close. [FileConn] and
// [Conn.File] duplicate, so each side closes its own.
//
// # Wire format
//
// Each value is one message: an 8-byte little-endian length, then the JSON,
// in one datagram, with the message's files (SCM_RIGHTS) on that datagram.
// This is the framing of the Rust crates wormhole-rs and tiny-nix-ipc, so Go
// and Rust processes can talk. A value too large for one datagram continues
// in datagrams of JSON bytes only. The JSON of one value is at most 64 MiB.
// frame.go and the README give the exact rules.
//
// # Linux only, and re-exec instead of fork
//
// The package uses Linux's SOCK_SEQPACKET, SCM_RIGHTS and /proc/self/exe.
// Go cannot fork a running program safely (go.dev/issue/27505): only the
// forking thread survives in the child, while the runtime's other threads
// may hold its locks. [Command] and [Start] therefore start the program's
// own binary again with the other end of a pair inherited, and [Dispatch]
// runs the function registered for it under [Register]. The child finds its
// end by the environment variable GO_CHANNEL_REEXEC_FD, which Dispatch
// removes.
package channel

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Conn is one end of a channel. All its methods may be called from many
// goroutines at once: each message is sent, and received, whole, and the
// datagrams of concurrent messages never interleave.
type Conn struct {
	s       *socket
	cleanup runtime.Cleanup // closes s if c is dropped unclosed
	sent    atomic.Bool     // a Send since the last Recv: that Recv awaits an answer
	child   int             // the child's pid if made by Start: see explain

	// smu is held for a whole message sent; it guards the fields below.
	smu   sync.Mutex
	hdr   [headerLen]byte
	sbuf  bytes.Buffer // the JSON of the message being sent, unless a RawMessage
	enc   *json.Encoder
	dgram int   // largest datagram to send: SO_SNDBUF-32, halved on EMSGSIZE
	serr  error // set once a message was cut short: the send side is broken

	// rmu is held for a whole message received; it guards the fields
	// below: rbuf, the first datagram of a message, of SO_SNDBUF bytes,
	// allocated on first use; msg, a message of several datagrams
	// reassembled so far, want bytes when whole, in the memory of the
	// caller's json.RawMessage if inRaw; fds, those of the message being
	// received, not yet handed out; ferr, an error about them, returned once
	// the message is whole; rerr, set on a protocol error: the receive side
	// is broken.
	rmu        sync.Mutex
	rbuf, msg  []byte
	want       int
	inRaw      bool
	fds        []int
	ferr, rerr error
}

// minDgram is the smallest datagram Send falls back to on EMSGSIZE, and
// maxKeep bounds the send buffer a Conn keeps between messages.
const minDgram, maxKeep = 1024, 4 << 20

// Pair returns the two ends of a new channel. Each end is close-on-exec.
func Pair() (c0, c1 *Conn, err error) {
	fds, err := socketpair()
	if err != nil {
		return nil, nil, err
	} else if c0, err = newConn(fds[0]); err != nil {
		unix.Close(fds[1])
	} else if c1, err = newConn(fds[1]); err != nil {
		c0.Close()
		c0 = nil
	}
	return c0, c1, err
}

func socketpair() ([2]int, error) {
	// CLOEXEC: a child started elsewhere meanwhile must not inherit an end.
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	return fds, wrap("socketpair", err)
}

// FileConn returns a Conn on a duplicate of f, which must be a connected
// AF_UNIX SOCK_SEQPACKET socket ("unixpacket" in package net), such as the
// other end of a Pair received with [Conn.RecvWithFds] or inherited by a
// child. The duplicate is close-on-exec; the caller still closes f.
// FileConn changes nothing on the socket: f keeps its mode, blocking or
// not, and the socket its options, whether FileConn succeeds or fails; and
// whatever another holder later sets on them, Close and deadlines still hold.
//
// Datagrams of up to the socket's SO_SNDBUF bytes, as read now, are accepted:
// on one machine this is at least what a peer with default settings sends.
func FileConn(f *os.File) (*Conn, error) {
	fd := -1
	rc, err := f.SyscallConn()
	if err == nil {
		if cerr := rc.Control(func(s uintptr) { fd, err = checkSocket(int(s)) }); cerr != nil {
			err = cerr
		}
	}
	if err != nil {
		return nil, fmt.Errorf("channel: %w", err)
	}
	return newConn(fd)
}

// checkSocket returns a close-on-exec duplicate of s if it is a connected
// AF_UNIX SOCK_SEQPACKET socket.
func checkSocket(s int) (int, error) {
	typ, err := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_TYPE)
	peer, err2 := unix.Getpeername(s) // ENOTCONN if not connected
	switch _, isUnix := peer.(*unix.SockaddrUnix); {
	case err != nil:
		return -1, err
	case typ != unix.SOCK_SEQPACKET:
		return -1, errors.New(`not a SOCK_SEQPACKET socket: listen and dial with "unixpacket"`)
	case err2 != nil:
		return -1, err2
	case !isUnix:
		return -1, errors.New("not an AF_UNIX socket")
	}
	fd, err := unix.FcntlInt(uintptr(s), unix.F_DUPFD_CLOEXEC, 0)
	return fd, os.NewSyscallError("fcntl", err)
}

// newConn returns a Conn on the socket fd, which it owns from then on.
func newConn(fd int) (*Conn, error) {
	s, err := newSocket(fd)
	if err != nil {
		return nil, fmt.Errorf("channel: %w", err)
	}
	// A datagram must fit the send buffer less 32 bytes (EMSGSIZE otherwise).
	c := &Conn{s: s, dgram: max(s.sndbuf-32, minDgram)}
	c.cleanup = runtime.AddCleanup(c, func(s *socket) { s.close() }, s)
	c.enc = json.NewEncoder(&c.sbuf)
	c.enc.SetEscapeHTML(false)
	return c, nil
}

// File returns a duplicate of c's socket, for example to pass this end of a
// channel to another process with [Conn.SendWithFds]. The duplicate is
// close-on-exec, and is the plain socket c was made on, in the mode it was
// found: a Pair's ends are blocking. Closing either does not affect the
// other, and the peer sees end of input only once both are closed; but both
// read and write the same socket: use one.
func (c *Conn) File() (*os.File, error) {
	fd, err := c.s.dup()
	if err != nil {
		return nil, wrap("file", err)
	}
	return os.NewFile(uintptr(fd), "channel"), nil
}

// Send sends v, encoded with encoding/json, as one message. It blocks until
// the kernel has taken the whole message: the peer's receive queue holds a
// few hundred small messages, and once it is full Send waits for the peer to
// read; a write deadline bounds the wait.
//
// A [json.RawMessage] is checked to be valid JSON and sent as it is, from
// its own memory. A *json.RawMessage goes through encoding/json, which
// compacts it. An error from encoding/json, or a value whose JSON is over
// 64 MiB, is returned before anything is written.
//
// Errors: one matching [syscall.EPIPE] when the peer is gone; one matching
// [net.ErrClosed] when c was closed before or during the call; one
// matching [os.ErrDeadlineExceeded] when the write deadline passed, even if
// the message would fit. If a message of several datagrams fails part-way
// (deadline, Close, peer gone), the send side is broken and every later
// Send returns an error, so the peer never sees half a value followed by
// another.
func (c *Conn) Send(v any) error {
	return c.explain(c.send(v, nil))
}

// SendWithFds is like [Conn.Send] but passes files along with v, 0 to 253 of
// them. The files stay the caller's: SendWithFds neither closes them nor
// calls their Fd method, and it keeps them alive until the kernel has them.
// The peer receives duplicates, in order, from RecvWithFds.
func (c *Conn) SendWithFds(v any, files ...*os.File) error {
	return c.explain(c.send(v, files))
}

func (c *Conn) send(v any, files []*os.File) error {
	c.smu.Lock()
	defer c.smu.Unlock()
	if c.serr != nil {
		return c.serr
	}
	var body []byte // the JSON to send
	if raw, ok := v.(json.RawMessage); ok && (validJSON(raw) || json.Valid(raw)) {
		body = raw // as it is, from the caller's memory: no copy, no compaction
	} else {
		if c.sbuf.Cap() > maxKeep {
			c.sbuf = bytes.Buffer{} // the Encoder holds &c.sbuf, which stays
		}
		c.sbuf.Reset()
		if err := c.enc.Encode(v); err != nil {
			return fmt.Errorf("channel: %w", err)
		}
		body = c.sbuf.Bytes()[:c.sbuf.Len()-1] // Encode ends the value with a newline
	}
	if len(body) > maxLen {
		return fmt.Errorf("channel: value of %d bytes of JSON is over the limit of %d", len(body), maxLen)
	}
	putHeader(c.hdr[:], len(body))
	oob, err := rights(files)
	if err != nil {
		return err
	}
	// The message is the header then body, cut into datagrams of c.dgram
	// bytes; the header and files go with the first. body is never empty.
	for off, head := 0, c.hdr[:]; off < len(body); {
		end := min(len(body), off+c.dgram-len(head))
		switch err := c.s.send(head, body[off:end], oob); {
		case errors.Is(err, unix.EMSGSIZE) && c.dgram > minDgram:
			c.dgram = max(c.dgram/2, minDgram) // someone lowered SO_SNDBUF
		case err != nil && off > 0:
			c.serr = fmt.Errorf("channel: send side broken, a message was cut short: %w", err)
			return err
		case err != nil:
			return err
		default:
			off, head, oob = end, nil, nil
		}
	}
	runtime.KeepAlive(files)
	c.sent.Store(true)
	return nil
}

// rights returns an SCM_RIGHTS message with the fds of files. It reads them
// through SyscallConn, never Fd(), which would put a file into blocking mode
// for every holder. The caller keeps files alive until sendmsg returns.
func rights(files []*os.File) ([]byte, error) {
	if len(files) == 0 {
		return nil, nil
	} else if len(files) > maxFds {
		return nil, fmt.Errorf("channel: %d files are more than the %d one message may carry", len(files), maxFds)
	}
	fds := make([]int, len(files))
	for i, f := range files {
		rc, err := f.SyscallConn() // os.ErrInvalid if f is nil
		if err == nil {
			err = rc.Control(func(fd uintptr) { fds[i] = int(fd) })
		}
		if err != nil {
			return nil, fmt.Errorf("channel: file %d: %w", i, err)
		}
	}
	return unix.UnixRights(fds...), nil
}

// Recv receives the next message into v, which must be a non-nil pointer,
// with encoding/json. It blocks until a whole message has arrived; a read
// deadline bounds the wait, and a Recv that times out part-way through a
// long message loses nothing: the next call resumes it. After a deadline,
// the next Recv returns the next message, which may be the late answer to
// an earlier request, as with a [net.Conn].
//
// Errors: [io.EOF] when the peer is gone at a message boundary, after every
// message it sent has been received (for a child that exited without
// running its function, an error matching io.EOF that says so: see
// [Start]); [io.ErrUnexpectedEOF] when it went in
// the middle of one. An encoding/json error when the JSON does not decode
// into v; the message is consumed and the Conn stays usable. If the message
// carried files, Recv closes them and returns an error; use RecvWithFds. A
// malformed frame breaks the receive side: that Recv and every later one
// return the same error. One matching [net.ErrClosed] when c was closed
// before or during the call, and one matching [os.ErrDeadlineExceeded]
// when the read deadline passed.
//
// Recv into a [json.RawMessage] checks the JSON with one fast pass and
// reuses the RawMessage's memory when it has room, as json.Unmarshal does;
// a long message is reassembled there directly. So that memory may be
// written also by a Recv that fails, but never after Recv has returned.
func (c *Conn) Recv(v any) error {
	_, err := c.recv(v, false)
	return c.explain(err)
}

// RecvWithFds is like [Conn.Recv] but also returns the files that came with
// the message, exactly those, in the order sent, close-on-exec. They are the
// caller's to close. On any error the files of the message are closed.
func (c *Conn) RecvWithFds(v any) ([]*os.File, error) {
	files, err := c.recv(v, true)
	return files, c.explain(err)
}

func (c *Conn) recv(v any, wantFds bool) ([]*os.File, error) {
	if rv := reflect.ValueOf(v); rv.Kind() != reflect.Pointer || rv.IsNil() {
		return nil, fmt.Errorf("channel: Recv needs a non-nil pointer, not %T", v)
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.rerr != nil {
		return nil, c.rerr
	}
	raw, _ := v.(*json.RawMessage)
	data, inRaw, err := c.readMsg(raw)
	if err != nil {
		return nil, err
	}
	fds, err := c.fds, c.ferr
	c.fds, c.ferr = nil, nil
	defer func() { closeFds(fds) }() // unless handed over; also on a panic in UnmarshalJSON
	switch {
	case err != nil:
	case !wantFds && len(fds) > 0:
		err = fmt.Errorf("channel: message carried %d files, closed: receive it with RecvWithFds", len(fds))
	case raw != nil && (validJSON(data) || json.Valid(data)):
		// As Unmarshal would, with one fast pass over the value.
		if data = bytes.TrimSpace(data); !inRaw { // valid JSON: only JSON's spaces
			data = append((*raw)[:0], data...)
		}
		*raw = data
	default:
		if err = json.Unmarshal(data, v); err != nil {
			err = fmt.Errorf("channel: %w", err)
		}
	}
	if err != nil {
		return nil, err
	}
	var files []*os.File // nil when the message carried none
	for _, fd := range fds {
		files = append(files, os.NewFile(uintptr(fd), "channel-fd"))
	}
	fds = nil
	return files, nil
}

// readMsg reads datagrams until a whole message has arrived, and returns its
// JSON; the fds that came with it are in c.fds. For a Recv into a
// json.RawMessage, raw is not nil: then a message of several datagrams is
// reassembled in *raw's memory if it has room, and inRaw says that the JSON
// returned is there or in memory c no longer uses, which the caller may keep. Otherwise the memory of a message grows with the bytes
// received, at most twice, never by the length announced alone.
func (c *Conn) readMsg(raw *json.RawMessage) (data []byte, inRaw bool, err error) {
	for first := c.msg == nil; first || len(c.msg) < c.want; first = false {
		if first && c.rbuf == nil {
			c.rbuf = make([]byte, c.s.sndbuf)
		}
		p := c.rbuf
		if !first {
			if need := min(c.want-len(c.msg), c.s.sndbuf); cap(c.msg)-len(c.msg) < need {
				n := c.want // halved while still twice enough: growth doubles, and ends at want
				for n/2 >= max(2*cap(c.msg), len(c.msg)+need) {
					n /= 2
				}
				c.msg = append(make([]byte, 0, n), c.msg...)
			}
			p = c.msg[len(c.msg):min(c.want, cap(c.msg))]
		}
		k := len(c.fds)
		n, oob, flags, err := c.s.recv(p, first && c.sent.Swap(false))
		c.fds = parseRights(oob, c.fds)
		switch {
		case err == io.EOF && !first:
			c.drop()
			return nil, false, io.ErrUnexpectedEOF
		case err != nil && c.inRaw && !first:
			c.msg, c.inRaw = append([]byte(nil), c.msg...), false // the caller's memory is theirs again
			return nil, false, err
		case err != nil:
			return nil, false, err
		}
		if err := checkDatagram(first, n, len(p), len(c.fds)-k, flags&unix.MSG_TRUNC != 0); err != nil {
			return nil, false, c.broken(err)
		}
		if flags&unix.MSG_CTRUNC != 0 && c.ferr == nil {
			// Control buffer too small or RLIMIT_NOFILE reached: the
			// kernel installed what fit and dropped the rest.
			c.ferr = errors.New("channel: control data truncated, files dropped (descriptor limit reached?)")
		}
		if !first {
			c.msg = c.msg[:len(c.msg)+n]
			continue
		}
		want, err := parseHeader(p[:n])
		if err != nil {
			return nil, false, c.broken(err)
		} else if n-headerLen == want {
			return p[headerLen:n], false, nil
		}
		c.want, c.inRaw = want, raw != nil && cap(*raw) >= want
		if c.msg = nil; c.inRaw {
			c.msg = (*raw)[:0]
		}
		c.msg = append(c.msg, p[headerLen:n]...)
	}
	msg := c.msg
	c.msg = nil
	return msg, true, nil // the caller's memory, or new memory c forgets now
}

// broken stops the receive side with err, a protocol error.
func (c *Conn) broken(err error) error {
	c.drop()
	c.rerr = err
	return err
}

// drop forgets the message being received and closes its fds.
func (c *Conn) drop() {
	closeFds(c.fds)
	c.fds, c.ferr, c.msg = nil, nil, nil
}

// SetDeadline sets the read and write deadlines, as [net.Conn] does: a
// call blocked past it returns an error matching [os.ErrDeadlineExceeded].
// A deadline moved while a call is blocked takes effect at once; the zero
// time means none.
func (c *Conn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t) // fails only once c is closed, as the write half then does
	return c.SetWriteDeadline(t)
}

// SetReadDeadline sets the deadline for [Conn.Recv] and
// [Conn.RecvWithFds]; past it they return an error matching
// [os.ErrDeadlineExceeded]. The zero time means none.
func (c *Conn) SetReadDeadline(t time.Time) error {
	return wrap("set read deadline", c.s.setDeadline(reading, t))
}

// SetWriteDeadline sets the deadline for [Conn.Send] and
// [Conn.SendWithFds]; past it they return an error matching
// [os.ErrDeadlineExceeded]. The zero time means none.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	return wrap("set write deadline", c.s.setDeadline(writing, t))
}

// CloseWrite shuts down the sending side of c, as [net.UnixConn.CloseWrite]
// does: the peer's Recv returns [io.EOF] after every message sent before,
// while c still receives. A Send after it returns an error matching
// [net.ErrClosed]. It says "no more requests" without
// closing: send from one goroutine, then CloseWrite, and read the answers
// in another. The socket is shared with its [Conn.File] duplicates, which
// can no longer send either.
func (c *Conn) CloseWrite() error {
	return wrap("close write", c.s.shutdownWrite())
}

// Close closes the socket. Calls blocked in c return at once, and every
// later call returns, an error matching [net.ErrClosed]; so does a second
// Close. The peer receives [io.EOF] once it has read what was sent before,
// unless another process still holds the socket (see [Conn.File]). Files of
// a message received in part are closed.
func (c *Conn) Close() error {
	err := c.s.close()
	if err != net.ErrClosed {
		c.cleanup.Stop()
		c.rmu.Lock()
		c.drop()
		c.rmu.Unlock()
	}
	return wrap("close", err)
}
