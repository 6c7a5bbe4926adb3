//go:build linux

// The socket layer: one connected AF_UNIX SOCK_SEQPACKET socket, its waits,
// sendmsg and recvmsg with their control messages, and its closing. It never
// refers to Conn or JSON: Conn serializes the calls of each direction and
// passes its policy down (that a Recv awaits an answer).
//
// Nothing is left on the socket. Its file description's mode is shared by
// every holder and any of them may change it, so every sendmsg and recvmsg
// passes MSG_DONTWAIT and the mode is never read or set; no socket option is
// set either. A call that must wait does so in one of two places:
//
//   - In the kernel: ppoll(2) on the socket and an eventfd (efd), through
//     syscall.Syscall, so that the runtime may hand the thread's P on. When
//     the peer's datagram comes, the kernel wakes this thread itself, which
//     is what makes a round trip as fast as a blocking recvmsg; the runtime
//     poller would wake one of its threads first, which then wakes the
//     goroutine. Close and a changed deadline write efd to end the wait, as
//     the runtime's netpollBreak does: no signal. One call of a socket at a
//     time waits here (kmu), so that it alone drains efd. Such a wait lasts
//     at most kernelWait, or till the deadline.
//   - In the runtime poller, holding no thread: on a private epoll instance
//     (ep), registered in the runtime poller, that watches the socket only
//     for this wait. The runtime watches each descriptor for input and output
//     at once, and Linux wakes a unix socket's writers each time the peer
//     takes one of its datagrams, so the socket itself in the runtime's epoll
//     would wake the poller for nothing. ep's deadline is the waiter's, and
//     Close closes ep. One call at a time waits here (pmu); the other
//     direction meanwhile waits in the kernel, a kernelWait at a time.
//
// A Recv that awaits an answer (its Conn sent since its last Recv) waits in
// the kernel first, then in the poller. Every other wait is a stream's, and
// goes to the poller at once, where several datagrams queue between wake-ups.
//
// Every syscall on the socket and efd runs inside a callback of ep's
// RawConn, and Close closes ep, which waits for callbacks in progress, before
// it closes them: no call reaches a descriptor number that Close released and
// the process reused.

package channel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// maxFds is SCM_MAX_FD: the kernel refuses more fds in one sendmsg.
	maxFds = 253
	// oobExtra is control buffer room beyond maxFds descriptors, for what
	// socket options make the kernel add to every datagram: SCM_CREDENTIALS,
	// a timestamp, SCM_PIDFD, an SCM_SECURITY label.
	oobExtra = 512
	// kernelWait bounds one wait in the kernel: past it a call holds no
	// thread.
	kernelWait = 2 * time.Millisecond
)

// The two directions of a socket.
const reading, writing = 0, 1

type socket struct {
	fd, efd int
	sndbuf  int // SO_SNDBUF when the socket was adopted
	ep      *os.File
	rc      syscall.RawConn // ep's: see the file comment
	closed  atomic.Bool
	wshut   atomic.Bool // the sending side is shut down
	kwait   atomic.Bool // a call waits in the kernel, or is about to
	kmu     sync.Mutex  // held by the call that waits in the kernel
	pmu     sync.Mutex  // held by the call that waits in the poller
	op      [2]*op
	kmax    time.Duration // kernelWait; tests lengthen it to find a call there

	// dmu guards the deadlines, and orders their changes with the start of
	// a wait in the poller.
	dmu  sync.Mutex
	dl   [2]time.Time // deadline of each direction; zero: none
	pdir int          // the direction waiting in the poller, or -1
}

// newSocket returns a socket on fd, which it owns from then on, even on error.
func newSocket(fd int) (*socket, error) {
	sndbuf, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF)
	efd, err2 := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	ep, err3 := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	err = errors.Join(os.NewSyscallError("getsockopt", err), os.NewSyscallError("eventfd", err2), os.NewSyscallError("epoll_create1", err3))
	if err != nil {
		closeFds([]int{fd, efd, ep}) // and -1s, which fail harmlessly
		return nil, err
	}
	unix.SetNonblock(ep, true) // our own description: for the runtime poller
	s := &socket{fd: fd, efd: efd, sndbuf: sndbuf, ep: os.NewFile(uintptr(ep), "channel-epoll"), pdir: -1, kmax: kernelWait}
	s.rc, _ = s.ep.SyscallConn()
	for dir := range s.op {
		o := &op{s: s, dir: dir}
		o.ctl, o.arm = o.control, o.pollArm
		o.del = func(ep uintptr) { unix.EpollCtl(int(ep), unix.EPOLL_CTL_DEL, s.fd, nil) }
		s.op[dir] = o
	}
	s.op[reading].oob = make([]byte, unix.CmsgSpace(maxFds*4)+oobExtra)
	return s, nil
}

// recv receives one datagram into p, and returns its length, its control
// data and recvmsg's msg_flags, of which the caller checks MSG_TRUNC and
// MSG_CTRUNC, never flags != 0: the kernel echoes MSG_CMSG_CLOEXEC there. An
// empty datagram is n == 0; the peer gone at the end of input is io.EOF.
// answer says that the call awaits an answer to what was just sent.
func (s *socket) recv(p []byte, answer bool) (n int, oob []byte, flags int, err error) {
	o := s.op[reading]
	o.p = p
	err = wrap("recvmsg", o.do(answer))
	o.p = nil
	if err != nil {
		return 0, nil, 0, err
	}
	return o.n, o.oob[:o.oobn], o.flags, nil
}

// send sends head then p, with the control data oob, as one datagram.
func (s *socket) send(head, p, oob []byte) error {
	o := s.op[writing]
	o.head, o.p, o.oob = head, p, oob
	err := wrap("sendmsg", o.do(false))
	o.head, o.p, o.oob = nil, nil, nil
	return err
}

// wrap names the call in err.
func wrap(name string, err error) error {
	switch err {
	case nil, io.EOF:
		return err
	case net.ErrClosed, os.ErrDeadlineExceeded:
		return fmt.Errorf("channel: %s: %w", name, err)
	}
	return fmt.Errorf("channel: %w", os.NewSyscallError(name, err))
}

// errPeerReset is sendmsg's ECONNRESET, which also matches syscall.EPIPE.
type errPeerReset struct{}

func (errPeerReset) Error() string { return unix.ECONNRESET.Error() }

func (errPeerReset) Is(target error) bool { return target == unix.EPIPE || target == unix.ECONNRESET }

// An op is one direction's sendmsg or recvmsg with its waits, in a form that
// RawConn callbacks can run. Its funcs are bound once, so that a call
// allocates nothing.
type op struct {
	s              *socket
	dir            int
	head, p, oob   []byte // sendmsg sends head then p as one datagram
	n, oobn, flags int
	err            error // the syscall's
	sleep          bool  // wait in the kernel before the syscall
	armed          bool  // ep watches the socket for o
	ctl, del       func(uintptr)
	arm            func(uintptr) bool
}

// do makes o's syscall, waiting while it would block, first in the kernel if
// inKernel is set. It returns the wait's error, net.ErrClosed or
// os.ErrDeadlineExceeded, or else the syscall's.
func (o *op) do(inKernel bool) error {
	s := o.s
	for {
		if s.closed.Load() || o.dir == writing && s.wshut.Load() {
			return net.ErrClosed
		}
		if s.left(o.dir) <= 0 {
			return os.ErrDeadlineExceeded
		}
		o.sleep = inKernel && s.kmu.TryLock()
		err := s.rc.Control(o.ctl)
		if o.sleep {
			s.kmu.Unlock()
		}
		if err != nil {
			return net.ErrClosed
		}
		if o.err != unix.EAGAIN {
			return o.err
		}
		// In the poller, unless the other direction waits there: then in
		// the kernel, a kernelWait at a time.
		inKernel = !s.pmu.TryLock()
		if !inKernel {
			s.pollWait(o)
			s.pmu.Unlock()
			inKernel = !o.armed // epoll_ctl failed (ENOSPC, ENOMEM): wait in the kernel
		}
	}
}

// left returns the time left until dir's deadline, at most s.kmax, or 0
// once it has passed.
func (s *socket) left(dir int) time.Duration {
	s.dmu.Lock()
	dl := s.dl[dir]
	s.dmu.Unlock()
	if dl.IsZero() {
		return s.kmax
	}
	return max(min(time.Until(dl), s.kmax), 0)
}

// control runs in a RawConn callback: a wait in the kernel if o.sleep is
// set, then the syscall.
func (o *op) control(uintptr) {
	s := o.s
	if o.sleep {
		ev := [2]int16{unix.POLLIN | unix.POLLRDHUP, unix.POLLOUT}[o.dir]
		pfd := [2]unix.PollFd{{Fd: int32(s.fd), Events: ev}, {Fd: int32(s.efd), Events: unix.POLLIN}}
		s.kwait.Store(true)
		// Looked at after kwait is set: a later Close or deadline wakes us.
		// ppoll writes the time left back into ts: after a signal
		// (EINTR), the next call waits for the rest.
		ts := unix.NsecToTimespec(int64(s.left(o.dir)))
		for ts != (unix.Timespec{}) && !s.closed.Load() {
			_, _, e := syscall.Syscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&pfd[0])), 2, uintptr(unsafe.Pointer(&ts)), 0, 0, 0)
			if e != unix.EINTR {
				break
			}
		}
		s.kwait.Store(false)
		if pfd[1].Revents != 0 {
			var b [8]byte
			unix.Read(s.efd, b[:])
		}
	}
	if o.dir == writing {
		// MSG_NOSIGNAL: a cgo host may not ignore SIGPIPE as Go does.
		o.n, _, _, o.err = msg(unix.SYS_SENDMSG, s.fd, o.head, o.p, o.oob, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		if o.err == unix.ECONNRESET {
			// A peer that closed with our data unread: the next sendmsg
			// says ECONNRESET, the one after EPIPE. Both mean it is gone.
			o.err = errPeerReset{}
		}
		return
	}
	// A SEQPACKET peer that closed with our data unread makes recvmsg fail
	// once with ECONNRESET, before the datagrams it had sent us.
	for o.err = unix.ECONNRESET; o.err == unix.ECONNRESET; {
		o.n, o.oobn, o.flags, o.err = msg(unix.SYS_RECVMSG, s.fd, nil, o.p, o.oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
	}
	if o.err == nil && o.n == 0 && o.oobn == 0 && peerGone(s.fd) {
		o.err = io.EOF
	}
}

// pollWait waits in the runtime poller until the socket is ready for o, its
// deadline passes or s is closed. The caller holds s.pmu, and looks again.
func (s *socket) pollWait(o *op) {
	s.dmu.Lock()
	s.pdir = o.dir
	s.ep.SetReadDeadline(s.dl[o.dir])
	s.dmu.Unlock()
	o.armed = false
	s.rc.Read(o.arm)
	s.dmu.Lock()
	s.pdir = -1
	s.dmu.Unlock()
	if o.armed {
		s.rc.Control(o.del)
	}
}

// pollArm, in ep's RawConn.Read, makes ep watch the socket for o; called
// again once ep is ready, it ends the wait. Readiness that came since o's
// syscall makes ep ready at once.
func (o *op) pollArm(ep uintptr) bool {
	if !o.armed {
		ev := unix.EpollEvent{Events: [2]uint32{unix.EPOLLIN | unix.EPOLLRDHUP, unix.EPOLLOUT}[o.dir], Fd: int32(o.s.fd)}
		o.armed = unix.EpollCtl(int(ep), unix.EPOLL_CTL_ADD, o.s.fd, &ev) == nil
		return !o.armed
	}
	return true
}

// setDeadline sets dir's deadline, and makes a call waiting on it look again.
func (s *socket) setDeadline(dir int, t time.Time) error {
	if s.closed.Load() {
		return net.ErrClosed
	}
	s.dmu.Lock()
	s.dl[dir] = t
	if s.pdir == dir {
		s.ep.SetReadDeadline(t)
	}
	s.dmu.Unlock()
	if s.kwait.Load() {
		s.wake()
	}
	return nil
}

// wake ends the wait of the call waiting in the kernel, if any.
func (s *socket) wake() {
	s.rc.Control(func(uintptr) { unix.Write(s.efd, []byte{1, 0, 0, 0, 0, 0, 0, 0}) })
}

// close closes the socket; calls waiting on it return net.ErrClosed.
func (s *socket) close() error {
	if s.closed.Swap(true) {
		return net.ErrClosed
	}
	s.wake()
	s.ep.Close() // wakes the poller's waiter, and waits for every callback
	unix.Close(s.efd)
	return unix.Close(s.fd)
}

// shutdownWrite shuts down the socket's sending side.
func (s *socket) shutdownWrite() (err error) {
	s.wshut.Store(true)
	if s.rc.Control(func(uintptr) { err = unix.Shutdown(s.fd, unix.SHUT_WR) }) != nil {
		return net.ErrClosed
	}
	return os.NewSyscallError("shutdown", err)
}

// dup returns a close-on-exec duplicate of the socket.
func (s *socket) dup() (fd int, err error) {
	if s.rc.Control(func(uintptr) { fd, err = unix.FcntlInt(uintptr(s.fd), unix.F_DUPFD_CLOEXEC, 0) }) != nil {
		return -1, net.ErrClosed
	}
	return fd, err
}

// msg makes one sendmsg or recvmsg call on the bytes of head then p, and
// returns the bytes moved and, for recvmsg, the control bytes received and
// msg_flags. Calls never wait (MSG_DONTWAIT), so they are raw syscalls:
// skipping the runtime's entersyscall spares a wake-up of its sysmon.
func msg(trap uintptr, fd int, head, p, oob []byte, flags int) (n, oobn, outflags int, err error) {
	var iov [2]unix.Iovec
	var h unix.Msghdr
	for _, b := range [2][]byte{head, p} {
		if len(b) > 0 {
			iov[h.Iovlen].Base = &b[0]
			iov[h.Iovlen].SetLen(len(b))
			h.Iov, h.Iovlen = &iov[0], h.Iovlen+1
		}
	}
	if len(oob) > 0 {
		h.Control = &oob[0]
		h.SetControllen(len(oob))
	}
	r, _, e := unix.RawSyscall(trap, uintptr(fd), uintptr(unsafe.Pointer(&h)), uintptr(flags))
	if e != 0 {
		return 0, 0, 0, e
	}
	return int(r), int(h.Controllen), int(h.Flags), nil
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

// parseRights appends the fds of the SCM_RIGHTS messages in oob to fds, and
// closes those of SCM_PIDFD (from SO_PASSPIDFD): they are not the message's,
// and only we can close them.
func parseRights(oob []byte, fds []int) []int {
	msgs, _ := unix.ParseSocketControlMessage(oob)
	for i := range msgs {
		if m := &msgs[i]; m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_RIGHTS {
			rights, _ := unix.ParseUnixRights(m)
			fds = append(fds, rights...)
		} else if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_PIDFD && len(m.Data) >= 4 {
			unix.Close(int(int32(binary.NativeEndian.Uint32(m.Data))))
		}
	}
	return fds
}

// closeFds closes fds received and not handed to the caller.
func closeFds(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
