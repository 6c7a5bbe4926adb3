//go:build linux

// Package channel sends JSON values and open files between processes over
// one end of an anonymous AF_UNIX SOCK_SEQPACKET socketpair.
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
// # Who owns which descriptor
//
// A [Conn] owns its socket; [Conn.Close] closes it. Files passed to
// [Conn.SendWithFds] stay the caller's: the kernel duplicates them into the
// message and the caller closes its own copies when it likes. Files returned
// by [Conn.RecvWithFds] are the caller's to close. [FileConn] and
// [Conn.File] duplicate, so each side closes its own.
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
	sock    int                    // the socket: see fds.go for when it may be used
	rep     *poller                // waits of Recv; its callbacks keep sock open
	sep     atomic.Pointer[poller] // waits of Send, made for the first
	closed  atomic.Bool
	sent    atomic.Bool     // a Send since the last Recv: see sysop.mayBlock
	cleanup runtime.Cleanup // closes sock if c is dropped unclosed
	rdl     atomic.Int64    // read deadline, since epoch; 0: none
	wdl     atomic.Int64    // write deadline, since epoch; 0: none
	dmu     sync.Mutex      // orders SetWriteDeadline and making sep
	wdt     time.Time       // write deadline, for sep; guarded by dmu

	// smu is held for a whole message sent; it guards the fields below.
	smu   sync.Mutex
	sop   *sysop
	hdr   [headerLen]byte // the header of the message being sent
	sbuf  bytes.Buffer    // the JSON of the message being sent, unless a RawMessage
	enc   *json.Encoder
	soob  []byte
	dgram int   // largest datagram to send: SO_SNDBUF-32, halved on EMSGSIZE
	serr  error // set once a message was cut short: the send side is broken

	// rmu is held for a whole message received; it guards the fields below.
	rmu   sync.Mutex
	rop   *sysop
	rbuf  []byte // the first datagram of a message; allocated on first use
	rlen  int    // len(rbuf): SO_SNDBUF when the Conn was made
	msg   []byte // a message of several datagrams, being reassembled
	from  int    // where msg's memory came from: fromSpare, fromMake, fromCaller
	spare []byte // the last msg, kept for the next if at most maxSpare
	have  int    // bytes of msg received so far; msg == nil when none is due
	fds   []int  // fds of the message being received, not yet handed out
	ferr  error  // an error about fds, returned once the message is whole
	rerr  error  // set on a protocol error: the receive side is broken
}

// Pair returns the two ends of a new channel. Each end is close-on-exec.
func Pair() (*Conn, *Conn, error) {
	f0, f1, err := socketpair()
	if err != nil {
		return nil, nil, err
	}
	defer f0.Close()
	defer f1.Close()
	c0, err := FileConn(f0)
	if err != nil {
		return nil, nil, err
	}
	c1, err := FileConn(f1)
	if err != nil {
		c0.Close()
		return nil, nil, err
	}
	return c0, c1, nil
}

func socketpair() (*os.File, *os.File, error) {
	// CLOEXEC: a child started elsewhere meanwhile must not inherit an end.
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("channel: %w", os.NewSyscallError("socketpair", err))
	}
	return os.NewFile(uintptr(fds[0]), "channel"), os.NewFile(uintptr(fds[1]), "channel"), nil
}

// FileConn returns a Conn on a duplicate of f, which must be a connected
// AF_UNIX SOCK_SEQPACKET socket, such as the other end of a Pair received
// with [Conn.RecvWithFds] or inherited by a child. The duplicate is
// close-on-exec; the caller still closes f. FileConn puts the socket's
// file description, which f and the duplicate share, in blocking mode, so
// f is blocking too, and sets the socket's SO_RCVTIMEO to a few
// milliseconds: a Recv waits first in a blocking recvmsg, the fastest
// wake-up, then in the runtime poller. The Conn works whatever the mode;
// another holder switching it to non-blocking costs speed, not
// correctness. Do not change SO_RCVTIMEO: with none, a Recv blocked in
// recvmsg would not see Close.
//
// Datagrams of up to f's SO_SNDBUF bytes are accepted, as read now: on one
// machine this is at least what a peer with default settings sends.
func FileConn(f *os.File) (*Conn, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("channel: %w", err)
	}
	var sndbuf, sock int
	cerr := rc.Control(func(fd uintptr) {
		if sndbuf, err = checkSocket(int(fd)); err == nil {
			sock, err = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
		}
	})
	if cerr != nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("channel: %w", err)
	}
	// For the first phase of a wait: see fds.go.
	tv := unix.NsecToTimeval(int64(blockTimeout))
	if err = unix.SetsockoptTimeval(sock, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err == nil {
		err = unix.SetNonblock(sock, false)
	}
	if err != nil {
		unix.Close(sock)
		return nil, fmt.Errorf("channel: %w", err)
	}
	rep, err := newPoller()
	if err != nil {
		unix.Close(sock)
		return nil, err
	}
	c := &Conn{sock: sock, rep: rep, rlen: sndbuf}
	c.cleanup = runtime.AddCleanup(c, func(fd int) { unix.Close(fd) }, sock)
	c.sop, c.rop = newOp(c, false), newOp(c, true)
	// A datagram must fit the send buffer less 32 bytes (EMSGSIZE otherwise).
	c.dgram = max(sndbuf-32, minDgram)
	c.enc = json.NewEncoder(&c.sbuf)
	c.enc.SetEscapeHTML(false)
	return c, nil
}

// checkSocket returns the SO_SNDBUF of s if it is a connected AF_UNIX
// SOCK_SEQPACKET socket, before FileConn changes anything on it.
func checkSocket(s int) (sndbuf int, err error) {
	dom, err := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return 0, err
	}
	typ, err := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_TYPE)
	switch {
	case err != nil:
		return 0, err
	case dom != unix.AF_UNIX:
		return 0, errors.New("not an AF_UNIX socket")
	case typ != unix.SOCK_SEQPACKET:
		return 0, errors.New("not a SOCK_SEQPACKET socket")
	}
	if _, err := unix.Getpeername(s); err != nil {
		return 0, err
	}
	return unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_SNDBUF)
}

// sendPoller returns c.sep, made on first use.
func (c *Conn) sendPoller() (*poller, error) {
	if p := c.sep.Load(); p != nil {
		return p, nil
	}
	p, err := newPoller()
	if err != nil {
		return nil, err
	}
	c.dmu.Lock()
	defer c.dmu.Unlock()
	c.sep.Store(p)
	if c.closed.Load() { // Close may have missed p
		p.f.Close()
		return nil, net.ErrClosed
	}
	return p, p.f.SetReadDeadline(c.wdt)
}

// Where the memory of a message being reassembled came from.
const (
	fromSpare  = iota // the Conn's spare, which it reuses
	fromMake          // allocated for this message
	fromCaller        // the json.RawMessage of the Recv under way
)

const (
	// minDgram is the smallest datagram Send falls back to on EMSGSIZE.
	minDgram = 1024
	// maxSpare bounds what a Conn keeps between messages for reuse.
	maxSpare = 4 << 20
)

// File returns a duplicate of c's socket, for example to send this end of a
// channel to another process with [Conn.SendWithFds]. The duplicate is
// close-on-exec, and shares the mode of c's file description, blocking or
// not, which c never depends on, and the socket's options: its blocking
// reads end after the few milliseconds of c's SO_RCVTIMEO. Closing either
// does not affect the other, but both read and write the same socket: use
// one.
func (c *Conn) File() (*os.File, error) {
	var fd int
	var err error
	if c.rep.rc.Control(func(uintptr) { fd, err = unix.FcntlInt(uintptr(c.sock), unix.F_DUPFD_CLOEXEC, 0) }) != nil {
		return nil, closedErr("file")
	}
	if err != nil {
		return nil, fmt.Errorf("channel: file: %w", os.NewSyscallError("fcntl", err))
	}
	return os.NewFile(uintptr(fd), "channel"), nil
}

// Send sends v, encoded with encoding/json, as one message. It blocks until
// the kernel has taken the whole message, which waits while the peer's
// receive queue is full; a write deadline bounds the wait.
//
// A [json.RawMessage] is checked to be valid JSON and sent as it is, from
// its own memory. A *json.RawMessage goes through encoding/json, which
// compacts it. An error from encoding/json, or a value whose JSON is over
// 64 MiB, is returned before anything is written.
//
// Errors: one matching [syscall.EPIPE] when the peer is gone; one matching
// [net.ErrClosed] when c was closed before or during the call; one
// matching [os.ErrDeadlineExceeded] when the write deadline passed. If a
// message of several datagrams fails part-way (deadline, Close, peer
// gone), the send side is broken and every later Send returns an error, so
// the peer never sees half a value followed by another.
func (c *Conn) Send(v any) error {
	return c.send(v, nil)
}

// SendWithFds is like [Conn.Send] but passes files along with v, 0 to 253 of them.
// The files stay the caller's: SendWithFds neither closes them nor calls
// their Fd method, and it keeps them alive until the kernel has them. The
// peer receives duplicates, in order, from RecvWithFds.
func (c *Conn) SendWithFds(v any, files ...*os.File) error {
	if len(files) > maxFds {
		return fmt.Errorf("channel: %d files are more than the %d one message may carry", len(files), maxFds)
	}
	return c.send(v, files)
}

func (c *Conn) send(v any, files []*os.File) error {
	c.smu.Lock()
	defer func() {
		if c.sbuf.Cap() > maxSpare {
			c.sbuf = bytes.Buffer{} // the Encoder holds &c.sbuf, which stays
		}
		c.smu.Unlock()
	}()
	if c.closed.Load() {
		return closedErr("sendmsg")
	}
	if c.serr != nil {
		return c.serr
	}
	var body []byte // the JSON to send
	if raw, ok := v.(json.RawMessage); ok && (validJSON(raw) || json.Valid(raw)) {
		body = raw // as it is, from the caller's memory: no copy, no compaction
	} else {
		c.sbuf.Reset()
		if err := c.enc.Encode(v); err != nil {
			return fmt.Errorf("channel: %w", err)
		}
		body = c.sbuf.Bytes()[:c.sbuf.Len()-1] // Encode ends the value with a newline
	}
	if len(body) > maxLen {
		return fmt.Errorf("channel: value of %d bytes of JSON is over the limit of %d", len(body), maxLen)
	}
	hdr := c.hdr[:]
	putHeader(hdr, len(body))
	oob, err := putRights(c.soob, files)
	if err != nil {
		return err
	}
	c.soob = oob[:0]
	// The message is hdr then body, cut into datagrams of c.dgram bytes.
	for off, total := 0, headerLen+len(body); off < total; {
		end := min(total, off+c.dgram)
		head, p := hdr, body[:end-headerLen]
		if off > 0 {
			head, p = nil, body[off-headerLen:end-headerLen]
		}
		err := c.sop.send(head, p, oob)
		if errors.Is(err, unix.EMSGSIZE) && c.dgram > minDgram {
			// Someone lowered SO_SNDBUF: use smaller datagrams.
			c.dgram = max(c.dgram/2, minDgram)
			continue
		}
		if err != nil {
			if off > 0 {
				c.serr = fmt.Errorf("channel: send side broken, a message was cut short: %w", err)
			}
			return err
		}
		off, oob = end, nil
	}
	runtime.KeepAlive(files)
	c.sent.Store(true)
	return nil
}

// Recv receives the next message into v, which must be a non-nil pointer,
// with encoding/json. It blocks until a whole message has arrived; a read
// deadline bounds the wait, and a Recv that times out part-way through a
// long message loses nothing: the next call resumes it.
//
// Errors: [io.EOF] when the peer is gone at a message boundary, after every
// message it sent has been received; [io.ErrUnexpectedEOF] when it went in the
// middle of one. An encoding/json error when the JSON does not decode into
// v; the message is consumed and the Conn stays usable. If the message
// carried files, Recv closes them and returns an error; use RecvWithFds.
// A malformed frame breaks the receive side: that Recv and every later one
// return the same error. One matching [net.ErrClosed] when c was closed
// before or during the call, and one matching [os.ErrDeadlineExceeded]
// when the read deadline passed.
//
// Recv into a [json.RawMessage] checks the JSON with one fast pass and reuses
// the RawMessage's memory when it has room, as json.Unmarshal does; a long
// message is reassembled there directly. So that memory may be written also
// by a Recv that fails, but never after Recv has returned.
func (c *Conn) Recv(v any) error {
	_, err := c.recv(v, false)
	return err
}

// RecvWithFds is like [Conn.Recv] but also returns the files that came with the
// message, exactly those, in the order sent, close-on-exec. They are the
// caller's to close. On any error the files of the message are closed.
func (c *Conn) RecvWithFds(v any) ([]*os.File, error) {
	return c.recv(v, true)
}

func (c *Conn) recv(v any, wantFds bool) ([]*os.File, error) {
	if rv := reflect.ValueOf(v); rv.Kind() != reflect.Pointer || rv.IsNil() {
		return nil, fmt.Errorf("channel: Recv needs a non-nil pointer, not %T", v)
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.closed.Load() {
		return nil, closedErr("recvmsg")
	}
	if c.rerr != nil {
		return nil, c.rerr
	}
	raw, _ := v.(*json.RawMessage)
	data, inRaw, err := c.readMsg(raw)
	if err != nil {
		return nil, err
	}
	fds, ferr := c.fds, c.ferr
	c.fds, c.ferr = c.fds[:0], nil
	handed := false
	defer func() {
		if !handed { // an error, or a panic in the caller's UnmarshalJSON
			closeFds(fds)
		}
	}()
	if ferr == nil && !wantFds && len(fds) > 0 {
		ferr = fmt.Errorf("channel: message carried %d files, closed: receive it with RecvWithFds", len(fds))
	}
	if ferr == nil {
		if raw != nil && (validJSON(data) || json.Valid(data)) {
			// As Unmarshal would, with one fast pass over the value.
			if data = bytes.TrimSpace(data); inRaw { // valid JSON: only JSON's spaces
				*raw = data
			} else {
				*raw = append((*raw)[:0], data...)
			}
		} else if err := json.Unmarshal(data, v); err != nil {
			ferr = fmt.Errorf("channel: %w", err)
		}
	}
	if ferr != nil {
		return nil, ferr
	}
	handed = true
	if len(fds) == 0 {
		return nil, nil
	}
	files := make([]*os.File, len(fds))
	for i, fd := range fds {
		files[i] = os.NewFile(uintptr(fd), "channel-fd")
	}
	return files, nil
}

// readMsg reads datagrams until a whole message has arrived, and returns its
// JSON; the fds that came with it are in c.fds. For a Recv into a
// json.RawMessage, raw is not nil: then a message of several datagrams is
// reassembled in *raw's memory if it has room, or else in new memory, and
// inRaw says that the caller may keep the JSON returned without a copy.
func (c *Conn) readMsg(raw *json.RawMessage) (data []byte, inRaw bool, err error) {
	if c.msg == nil {
		if c.rbuf == nil {
			c.rbuf = make([]byte, c.rlen)
		}
		n, err := c.datagram(c.rbuf, true)
		if err != nil {
			return nil, false, err
		}
		d := c.rbuf[:n]
		want, err := parseHeader(d)
		if err != nil {
			return nil, false, c.broken(err)
		}
		if len(d)-headerLen == want {
			return d[headerLen:], false, nil
		}
		// parseHeader bounded want: allocating it is safe.
		switch {
		case raw != nil && cap(*raw) >= want:
			c.msg, c.from = (*raw)[:want], fromCaller
		case raw == nil && cap(c.spare) >= want:
			c.msg, c.from = c.spare[:want], fromSpare
		default:
			c.msg, c.from = make([]byte, want), fromMake
		}
		c.have = copy(c.msg, d[headerLen:])
	}
	for c.have < len(c.msg) {
		n, err := c.datagram(c.msg[c.have:], false)
		if err == io.EOF {
			c.drop()
			return nil, false, io.ErrUnexpectedEOF
		}
		if err != nil {
			if c.msg != nil && c.from == fromCaller {
				// The next call resumes the message: in memory of our own,
				// for the caller's is theirs again once this call returns.
				m := make([]byte, len(c.msg))
				copy(m, c.msg[:c.have])
				c.msg, c.from = m, fromMake
			}
			return nil, false, err
		}
		if n == 0 {
			return nil, false, c.broken(fmt.Errorf("%w: empty datagram", errFrame))
		}
		c.have += n
	}
	msg := c.msg
	c.msg = nil
	if raw != nil && c.from != fromSpare {
		return msg, true, nil
	}
	if cap(msg) <= maxSpare {
		c.spare = msg // the caller is done with msg before the next message
	}
	return msg, false, nil
}

// datagram receives one datagram of a message into p.
func (c *Conn) datagram(p []byte, first bool) (int, error) {
	k := len(c.fds)
	n, fds, flags, err := c.rop.recv(p, c.fds)
	c.fds = fds
	switch {
	case err != nil:
		return 0, err
	case flags&unix.MSG_TRUNC != 0:
		return 0, c.broken(fmt.Errorf("%w: datagram longer than the %d bytes due", errFrame, len(p)))
	case !first && len(fds) > k:
		return 0, c.broken(fmt.Errorf("%w: file descriptors on a continuation datagram", errFrame))
	case flags&unix.MSG_CTRUNC != 0 && c.ferr == nil:
		// Control buffer too small or RLIMIT_NOFILE reached: the kernel
		// installed what fit and dropped the rest.
		c.ferr = errors.New("channel: control data truncated, files dropped (descriptor limit reached?)")
	}
	return n, nil
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
	c.fds, c.ferr, c.msg, c.have = c.fds[:0], nil, nil, 0
}

// SetDeadline sets the read and write deadlines, as [net.Conn] does: a
// call blocked past it returns an error matching [os.ErrDeadlineExceeded].
// A deadline moved while a call is blocked takes effect; the zero time
// means none.
func (c *Conn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return closedErr("set deadline")
	}
	return c.SetWriteDeadline(t)
}

// SetReadDeadline sets the deadline for [Conn.Recv] and
// [Conn.RecvWithFds]; past it they return an error matching
// [os.ErrDeadlineExceeded]. The zero time means none.
func (c *Conn) SetReadDeadline(t time.Time) error {
	dl := sinceEpoch(t)
	c.rdl.Store(dl)
	if c.rep.f.SetReadDeadline(t) != nil {
		return closedErr("set read deadline")
	}
	if dl != 0 && time.Duration(dl)-time.Since(epoch) <= nearDeadline {
		c.rop.interrupt() // a Recv blocked in recvmsg leaves it for the poller
	}
	return nil
}

// SetWriteDeadline sets the deadline for [Conn.Send] and
// [Conn.SendWithFds]; past it they return an error matching
// [os.ErrDeadlineExceeded]. The zero time means none.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	c.wdt = t
	c.wdl.Store(sinceEpoch(t))
	if p := c.sep.Load(); c.closed.Load() || p != nil && p.f.SetReadDeadline(t) != nil {
		return closedErr("set write deadline")
	}
	return nil
}

// sinceEpoch is t as a deadline of c.rdl or c.wdl: 0 for none, and at
// least 1, already past, for any other time.
func sinceEpoch(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return max(int64(t.Sub(epoch)), 1)
}

// Close closes the socket. Calls blocked in c return, and every later call
// returns, an error matching [net.ErrClosed]; so does a second Close. The
// peer receives [io.EOF] once it has read what was sent before. Files of a
// message received in part are closed.
func (c *Conn) Close() error {
	if c.closed.Swap(true) {
		return closedErr("close")
	}
	// Closing the pollers waits for their callbacks, the only users of
	// c.sock, and wakes the waits in them.
	c.rop.interrupt()
	c.rep.f.Close()
	if p := c.sep.Load(); p != nil {
		p.f.Close()
	}
	c.cleanup.Stop()
	err := unix.Close(c.sock)
	c.rmu.Lock()
	c.drop()
	c.rmu.Unlock()
	if err != nil {
		return fmt.Errorf("channel: close: %w", err)
	}
	return nil
}

func closedErr(op string) error {
	return fmt.Errorf("channel: %s: %w", op, net.ErrClosed)
}
