//go:build linux

// sendmsg and recvmsg, the waits between them, and SCM_RIGHTS.
//
// A Recv that awaits an answer (its Conn sent something since the last
// Recv) and finds nothing queued waits in two phases:
//
//   - First blocked in recvmsg itself, through syscall.Syscall, so that the
//     runtime can hand the thread's P to other goroutines. When the answer
//     comes, the kernel wakes this thread directly, and it runs at once.
//     The socket's SO_RCVTIMEO (blockTimeout) bounds this phase, a Close
//     or a deadline moved near interrupts it with a signal (see
//     interrupt), and a deadline already near skips it, for SO_RCVTIMEO
//     counts in scheduler ticks. At most maxBlocked calls of the process
//     block at once.
//   - Then in the runtime poller, holding no thread, on a private epoll
//     instance (Conn.rep) that watches the socket for this one wait, with
//     the deadline on that epoll's *os.File, and Close closing it.
//
// Every other wait is a stream's, and is the second phase alone (see
// mayBlock). A wait through the runtime poller alone costs several
// thread hand-offs per message, each a wake-up of a CPU that may be
// halted. Waiting in ppoll(2) instead of recvmsg costs a timer and two
// more syscalls a wait, and spinning takes the CPU the peer needs.
//
// The socket is never in the runtime's own epoll: the runtime watches each
// descriptor for input and output at once, and Linux wakes a unix socket's
// writers each time the peer takes one of its datagrams, so every message
// the peer received would wake the runtime's poller for nothing. A Send
// that must wait, because the peer's queue is full, waits in the poller
// on a second private epoll (Conn.sep) watching for output.
//
// Only the first phase needs the socket's file description in blocking
// mode, which FileConn sets. Every other sendmsg and recvmsg passes
// MSG_DONTWAIT, so none waits in the kernel whatever the mode, which every
// duplicate shares and anyone may switch: a description switched to
// non-blocking costs the first phase, not correctness.
//
// Every syscall on the socket runs inside a callback of c.rep's RawConn
// (or c.sep's), and Close closes those files, which waits for callbacks in
// progress, before it closes the socket: no call can reach a descriptor
// number that Close released and the process reused.

package channel

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// maxFds is SCM_MAX_FD: the kernel refuses more fds in one sendmsg.
const maxFds = 253

// oobExtra is control buffer room beyond maxFds descriptors, for what
// socket options make the kernel add to every datagram: SCM_CREDENTIALS
// (SO_PASSCRED), a timestamp (SO_TIMESTAMP, SO_TIMESTAMPNS), SCM_PIDFD
// (SO_PASSPIDFD) and an SCM_SECURITY label (SO_PASSSEC).
const oobExtra = 512

const (
	// blockTimeout, the socket's SO_RCVTIMEO, bounds the first phase of a
	// Recv's wait: the kernel rounds it up to whole scheduler ticks.
	blockTimeout = 2 * time.Millisecond
	// nearDeadline: a deadline nearer than this skips the first phase,
	// which may last blockTimeout rounded up to a tick of a 100 Hz kernel.
	nearDeadline = 25 * time.Millisecond
)

// maxBlocked bounds the calls blocked in the kernel at once, process-wide,
// and so the threads they hold; more wait in the poller at once.
const maxBlocked = 16

// nblocked counts the calls blocked in the kernel.
var nblocked atomic.Int32

// epoch is the origin of the monotonic times of deadlines.
var epoch = time.Now()

// noEpoll, as a RawConn callback's fd, makes sysop.run return when the
// syscall would wait, without arming anything.
const noEpoll = ^uintptr(0)

// A poller is a private epoll instance in the runtime poller: waiting in
// its RawConn's Read waits for what it watches.
type poller struct {
	f  *os.File
	rc syscall.RawConn
}

func newPoller() (*poller, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("channel: %w", os.NewSyscallError("epoll_create1", err))
	}
	unix.SetNonblock(fd, true) // for os.NewFile to use the runtime poller
	f := os.NewFile(uintptr(fd), "channel-epoll")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("channel: %w", err)
	}
	return &poller{f, rc}, nil
}

// sysop is one sendmsg or recvmsg with its waits, in a form that a RawConn
// can retry. Its fn is bound once, so that a call allocates nothing.
type sysop struct {
	c      *Conn
	in     bool                  // recvmsg, not sendmsg
	fn     func(fd uintptr) bool // the RawConn's fd is the epoll's, c.rep or c.sep
	ctl    func(fd uintptr)      // run without arming, for RawConn.Control
	dis    func(fd uintptr)      // disarm, for RawConn.Control
	done   bool                  // ctl's result
	head   []byte                // sendmsg only: sent before p, in the same datagram
	p      []byte
	oob    []byte
	n      int
	oobn   int
	flag   int // recvmsg's msg_flags
	gone   bool
	err    error // the syscall's
	werr   error // the wait's: a deadline or Close seen in the first phase
	armed  int   // the epoll fd watching the socket for this wait, or -1
	polled bool  // the first phase is over
	answer bool  // recvmsg: c sent something since the last Recv

	// A call blocked in the kernel, and a request to interrupt it.
	blocked atomic.Bool
	kick    atomic.Bool
}

func newOp(c *Conn, in bool) *sysop {
	op := &sysop{c: c, in: in, armed: -1}
	if in {
		op.oob = make([]byte, unix.CmsgSpace(maxFds*4)+oobExtra)
	}
	op.fn = op.run
	op.ctl = func(uintptr) { op.done = op.run(noEpoll) }
	op.dis = func(uintptr) { op.disarm() }
	return op
}

// run makes the syscall until it is done or must wait in the poller, for
// which it leaves the socket watched by the epoll ep.
func (op *sysop) run(ep uintptr) bool {
	for {
		block := !op.polled && op.mayBlock()
		op.try(block)
		switch {
		case op.err == unix.EINTR:
			if op.c.closed.Load() {
				op.werr = net.ErrClosed
				return true
			}
		case op.err == unix.ECONNRESET && op.in:
			// A SEQPACKET peer that closed with our data unread makes the
			// kernel report ECONNRESET once, before the datagrams it had
			// sent us.
		case op.err != unix.EAGAIN:
			op.disarm()
			return true
		case block:
			// The timeout ran out, or the description is non-blocking.
			op.polled = true
		case ep == noEpoll:
			return false
		default:
			op.polled = true
			ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(op.c.sock)}
			if !op.in {
				ev.Events = unix.EPOLLOUT
			}
			// Readiness that came since the try makes ep ready at once.
			err := unix.EpollCtl(int(ep), unix.EPOLL_CTL_ADD, op.c.sock, &ev)
			if err != nil && err != unix.EEXIST {
				op.werr = os.NewSyscallError("epoll_ctl", err)
				return true
			}
			op.armed = int(ep)
			return false
		}
	}
}

// mayBlock reports whether the syscall may block now: a recvmsg awaiting
// an answer (c sent something since its last Recv), not after Close, nor
// with a deadline near. Other waits are a stream's, which the poller
// serves better: a sender blocked in sendmsg is woken for every datagram
// the peer takes, and a receiver blocked in recvmsg for every datagram
// that comes, each time handing its P on.
func (op *sysop) mayBlock() bool {
	dl := op.c.rdl.Load()
	return op.in && op.answer && !op.c.closed.Load() && (dl == 0 || time.Duration(dl)-time.Since(epoch) > nearDeadline)
}

// try makes one sendmsg or recvmsg, which may wait in the kernel only if
// block is set. MSG_NOSIGNAL: a cgo host may not ignore SIGPIPE as Go does.
func (op *sysop) try(block bool) {
	trap, flags := uintptr(unix.SYS_RECVMSG), unix.MSG_CMSG_CLOEXEC
	if !op.in {
		trap, flags = unix.SYS_SENDMSG, unix.MSG_NOSIGNAL
	}
	switch {
	case !block:
		op.n, op.oobn, op.flag, op.err = msg(trap, uintptr(op.c.sock), op.head, op.p, op.oob, flags|unix.MSG_DONTWAIT)
	case nblocked.Add(1) > maxBlocked:
		nblocked.Add(-1)
		op.err = unix.EAGAIN
	default:
		op.blocked.Store(true)
		op.err = unix.EINTR
		if !op.kick.Swap(false) {
			op.n, op.oobn, op.flag, op.err = msg(trap, uintptr(op.c.sock), op.head, op.p, op.oob, flags)
		}
		op.blocked.Store(false)
		nblocked.Add(-1)
	}
	op.gone = op.in && op.err == nil && op.n == 0 && peerGone(op.c.sock)
}

// interrupt makes a recvmsg blocked in op look again at Close and the
// deadline: with SO_RCVTIMEO set, a signal makes it fail with EINTR
// (signal(7)). Which thread is blocked is not known without a syscall per
// wait, so every thread of the process gets SIGURG, the runtime's own
// preemption signal, which a Go program may receive spuriously anyway; the
// runtime restarts its other syscalls. The signal is sent again until the
// call is left, since it may come just before the thread enters it.
func (op *sysop) interrupt() {
	op.kick.Store(true)
	for pid := os.Getpid(); op.blocked.Load() && op.kick.Load(); time.Sleep(20 * time.Microsecond) {
		tasks, _ := os.ReadDir("/proc/self/task")
		for _, t := range tasks {
			if tid, err := strconv.Atoi(t.Name()); err == nil {
				unix.Tgkill(pid, tid, unix.SIGURG)
			}
		}
	}
}

// disarm stops the watch of the last wait, so that the runtime's poller
// is not woken for a socket nobody waits on.
func (op *sysop) disarm() {
	if op.armed >= 0 {
		unix.EpollCtl(op.armed, unix.EPOLL_CTL_DEL, op.c.sock, nil)
		op.armed = -1
	}
}

// msg makes one sendmsg or recvmsg call on the bytes of head then p, and
// returns the bytes moved and, for recvmsg, the control bytes received and
// msg_flags.
//
// A call with MSG_DONTWAIT never waits, and is a raw syscall: skipping the
// runtime's entersyscall spares a wake-up of its sysmon thread per call.
func msg(trap, fd uintptr, head, p, oob []byte, flags int) (n, oobn, outflags int, err error) {
	var iov [2]unix.Iovec
	var h unix.Msghdr
	k := 0
	for _, b := range [2][]byte{head, p} {
		if len(b) > 0 {
			iov[k].Base = &b[0]
			iov[k].SetLen(len(b))
			k++
		}
	}
	if k > 0 {
		h.Iov = &iov[0]
		h.SetIovlen(k)
	}
	if len(oob) > 0 {
		h.Control = &oob[0]
		h.SetControllen(len(oob))
	}
	call := unix.RawSyscall
	if flags&unix.MSG_DONTWAIT == 0 {
		call = unix.Syscall // may block: the runtime may take the P
	}
	r, _, e := call(trap, fd, uintptr(unsafe.Pointer(&h)), uintptr(flags))
	if e != 0 {
		return 0, 0, 0, e
	}
	return int(r), int(h.Controllen), int(h.Flags), nil
}

// send sends head then p, with the control data oob, as one datagram.
func (op *sysop) send(head, p, oob []byte) error {
	op.head, op.p, op.oob = head, p, oob
	defer func() { op.head, op.p, op.oob = nil, nil, nil }()
	op.werr, op.done, op.polled = nil, false, false
	if dl := op.c.wdl.Load(); dl != 0 && time.Duration(dl) <= time.Since(epoch) {
		op.werr = os.ErrDeadlineExceeded
	}
	// sendmsg under c.rep's Control, which keeps the socket open; a wait on
	// c.sep, made for the first Send that waits.
	var err error
	if op.werr == nil {
		err = op.c.rep.rc.Control(op.ctl)
	}
	if err == nil && !op.done && op.werr == nil {
		var sep *poller
		if sep, err = op.c.sendPoller(); err == nil {
			if err = sep.rc.Read(op.fn); err != nil && op.armed >= 0 {
				op.c.rep.rc.Control(op.dis)
			}
		}
	}
	if op.err == unix.ECONNRESET {
		// A peer that closed with our data unread: the next sendmsg says
		// ECONNRESET, the one after EPIPE. Both mean the peer is gone.
		op.err = errPeerReset{}
	}
	return op.result("sendmsg", err)
}

// errPeerReset is sendmsg's ECONNRESET, which also matches syscall.EPIPE.
type errPeerReset struct{}

func (errPeerReset) Error() string { return unix.ECONNRESET.Error() }

func (errPeerReset) Is(target error) bool { return target == unix.EPIPE || target == unix.ECONNRESET }

// recv receives one datagram into p and appends the fds that came with it
// to fds. It returns recvmsg's msg_flags, of which the caller checks
// MSG_TRUNC and MSG_CTRUNC, never flags != 0: the kernel echoes
// MSG_CMSG_CLOEXEC there. It reports an end of input (n == 0 without fds)
// as io.EOF only when the peer is gone; an empty datagram is n == 0.
func (op *sysop) recv(p []byte, fds []int) (n int, _ []int, flags int, err error) {
	op.p = p
	op.werr, op.polled = nil, false
	op.answer = op.answer || op.c.sent.Swap(false)
	if err = op.c.rep.rc.Read(op.fn); err != nil && op.armed >= 0 {
		op.c.rep.rc.Control(op.dis)
	}
	op.p = nil
	if err = op.result("recvmsg", err); err != nil {
		return 0, fds, 0, err
	}
	op.answer = false
	k := len(fds)
	fds = parseRights(op.oob[:op.oobn], fds)
	if op.n == 0 && len(fds) == k && op.gone {
		return 0, fds, op.flag, io.EOF
	}
	return op.n, fds, op.flag, nil
}

// result turns the error of the wait, or else of the syscall, into ours.
func (op *sysop) result(name string, waitErr error) error {
	if op.werr != nil {
		waitErr = op.werr
	}
	switch {
	case op.c.closed.Load() && waitErr != nil:
		return closedErr(name)
	case waitErr != nil:
		return fmt.Errorf("channel: %s: %w", name, waitErr)
	case op.err != nil:
		return fmt.Errorf("channel: %w", os.NewSyscallError(name, op.err))
	}
	return nil
}

// peerGone tells an end of input from an empty datagram, which recvmsg
// reports alike: the peer is gone when our receive side is shut down and
// nothing is queued.
func peerGone(fd int) bool {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
	if n, err := unix.Poll(pfd, 0); err != nil || n == 0 || pfd[0].Revents&(unix.POLLRDHUP|unix.POLLHUP) == 0 {
		return false
	}
	queued, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
	return err == nil && queued == 0
}

// parseRights appends the fds of every SCM_RIGHTS message in oob to fds,
// and closes those of any other control message (SCM_PIDFD, from
// SO_PASSPIDFD): they are not the message's, and only we can close them.
func parseRights(oob []byte, fds []int) []int {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		if h.Len < unix.SizeofCmsghdr || int(h.Len) > len(oob) {
			break
		}
		if h.Level == unix.SOL_SOCKET && (h.Type == unix.SCM_RIGHTS || h.Type == unix.SCM_PIDFD) {
			data := oob[unix.CmsgLen(0):h.Len]
			for ; len(data) >= 4; data = data[4:] {
				fd := int(int32(binary.NativeEndian.Uint32(data)))
				if h.Type == unix.SCM_RIGHTS {
					fds = append(fds, fd)
				} else {
					unix.Close(fd)
				}
			}
		}
		space := unix.CmsgSpace(int(h.Len) - unix.CmsgLen(0))
		if space > len(oob) {
			break
		}
		oob = oob[space:]
	}
	return fds
}

// putRights builds into buf, grown as needed, one SCM_RIGHTS message with
// the fds of files. It reads fd numbers through SyscallConn, never Fd(),
// which would put the file into blocking mode for every holder. The caller
// keeps files alive until sendmsg returns.
func putRights(buf []byte, files []*os.File) ([]byte, error) {
	if len(files) == 0 {
		return buf[:0], nil
	}
	n := unix.CmsgSpace(4 * len(files))
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	clear(buf)
	h := (*unix.Cmsghdr)(unsafe.Pointer(&buf[0]))
	h.Level = unix.SOL_SOCKET
	h.Type = unix.SCM_RIGHTS
	h.SetLen(unix.CmsgLen(4 * len(files)))
	data := buf[unix.CmsgLen(0):]
	for i, f := range files {
		if f == nil {
			return buf[:0], fmt.Errorf("channel: file %d is nil", i)
		}
		sc, err := f.SyscallConn()
		if err != nil {
			return buf[:0], fmt.Errorf("channel: file %d: %w", i, err)
		}
		var fd uintptr
		if err := sc.Control(func(s uintptr) { fd = s }); err != nil {
			return buf[:0], fmt.Errorf("channel: file %d: %w", i, err)
		}
		binary.NativeEndian.PutUint32(data[4*i:], uint32(fd))
	}
	return buf, nil
}

// closeFds closes fds received and not handed to the caller.
func closeFds(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
