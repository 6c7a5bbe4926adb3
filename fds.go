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
// Every use of the socket and efd holds mu for reading, and Close holds it
// whole once it has woken every waiter, before it closes them: no call
// reaches a descriptor number that Close released and the process reused.

package channel

import (
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
	// thread. Longer than a scheduler tick at 250 Hz or more, so that its
	// timer is rarely the CPU's next event, which would cost a VM exit to
	// program (BENCHMARKS.md: 2 ms measured slower than 5 ms on a busy VM).
	kernelWait = 5 * time.Millisecond
)

// The two directions of a socket.
const reading, writing = 0, 1

// A socket is fd, with efd and ep (see the file comment).
type socket struct {
	fd, efd       int
	sndbuf        int    // SO_SNDBUF when the socket was adopted
	oob           []byte // recvmsg's control buffer
	ep            *os.File
	rc            syscall.RawConn // ep's
	closed, wshut atomic.Bool     // wshut: the sending side is shut down
	kmax          time.Duration   // kernelWait; tests lengthen it to find a call there

	// mu is held for reading by every use of fd and efd, and whole by close.
	mu sync.RWMutex

	// kmu is held by the call that waits in the kernel, so that it alone drains efd.
	kmu sync.Mutex

	// pmu is held by the call that waits in the poller.
	pmu sync.Mutex

	// dmu guards dl, and orders its changes with the start of a poller wait.
	dmu sync.Mutex
	dl  [2]time.Time // each direction's deadline; zero: none
}

// newSocket returns a socket on fd, which it owns from then on, even on error.
func newSocket(fd int) (*socket, error) {
	sndbuf, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF)
	efd, err2 := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	ep, err3 := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err = errors.Join(os.NewSyscallError("getsockopt", err), os.NewSyscallError("eventfd", err2), os.NewSyscallError("epoll_create1", err3)); err != nil {
		closeFds([]int{fd, efd, ep}) // and -1s, which fail harmlessly
		return nil, err
	}
	unix.SetNonblock(ep, true) // our own description: for the runtime poller
	s := &socket{fd: fd, efd: efd, sndbuf: sndbuf, oob: make([]byte, unix.CmsgSpace(maxFds*4)+oobExtra), ep: os.NewFile(uintptr(ep), "channel-epoll"), kmax: kernelWait}
	s.rc, _ = s.ep.SyscallConn()
	return s, nil
}

// recv receives one datagram into p, and returns its length, its control
// data and recvmsg's msg_flags, of which the caller checks MSG_TRUNC and
// MSG_CTRUNC, never flags != 0: the kernel echoes MSG_CMSG_CLOEXEC there. An
// empty datagram is n == 0; the peer gone at the end of input is io.EOF.
// answer says that the call awaits an answer to what was just sent.
func (s *socket) recv(p []byte, answer bool) (n int, oob []byte, flags int, err error) {
	n, oobn, flags, err := s.do(reading, nil, p, s.oob, answer)
	return n, s.oob[:oobn], flags, wrap("recvmsg", err)
}

// send sends head then p, with the control data oob, as one datagram.
func (s *socket) send(head, p, oob []byte) error {
	_, _, _, err := s.do(writing, head, p, oob, false)
	return wrap("sendmsg", err)
}

// wrap names the call in err; an os.SyscallError also tells a timeout.
func wrap(name string, err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	return fmt.Errorf("channel: %w", os.NewSyscallError(name, err))
}

// do makes dir's syscall, waiting while it would block, first in the kernel
// if inKernel is set. It returns the wait's error, net.ErrClosed or
// os.ErrDeadlineExceeded, or else the syscall's results.
func (s *socket) do(dir int, head, p, oob []byte, inKernel bool) (n, oobn, flags int, err error) {
	for {
		switch {
		case s.closed.Load() || dir == writing && s.wshut.Load():
			return 0, 0, 0, net.ErrClosed
		case s.left(dir) <= 0:
			return 0, 0, 0, os.ErrDeadlineExceeded
		}
		sleep := inKernel && s.kmu.TryLock()
		err = s.use(func(fd int) (err error) {
			if sleep {
				s.waitKernel(dir)
			}
			n, oobn, flags, err = msg(dir, fd, head, p, oob)
			return err
		})
		if sleep {
			s.kmu.Unlock()
		}
		if err != unix.EAGAIN {
			return n, oobn, flags, err
		}
		// In the poller, unless the other direction waits there, or
		// epoll_ctl failed (ENOSPC, ENOMEM): then in the kernel, a
		// kernelWait at a time.
		inKernel = !s.pmu.TryLock() || !s.pollWait(dir)
	}
}

// left returns the time left until dir's deadline, at most s.kmax, or 0
// once it has passed.
func (s *socket) left(dir int) time.Duration {
	s.dmu.Lock()
	defer s.dmu.Unlock()
	if s.dl[dir].IsZero() {
		return s.kmax
	}
	return max(min(time.Until(s.dl[dir]), s.kmax), 0)
}

// waitKernel waits in ppoll until the socket is ready for dir, efd is
// written or s.left(dir) has passed. The caller holds kmu: a Close or
// deadline change after it took kmu writes efd.
func (s *socket) waitKernel(dir int) {
	ev := [2]int16{unix.POLLIN | unix.POLLRDHUP, unix.POLLOUT}[dir]
	pfd := [2]unix.PollFd{{Fd: int32(s.fd), Events: ev}, {Fd: int32(s.efd), Events: unix.POLLIN}}
	// ppoll writes the time left back into ts: after a signal (EINTR), the
	// next call waits for the rest.
	ts := unix.NsecToTimespec(int64(s.left(dir)))
	for ts != (unix.Timespec{}) && !s.closed.Load() {
		if _, _, e := syscall.Syscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&pfd[0])), 2, uintptr(unsafe.Pointer(&ts)), 0, 0, 0); e != unix.EINTR {
			break
		}
	}
	if pfd[1].Revents != 0 {
		var b [8]byte
		unix.Read(s.efd, b[:])
	}
}

// pollWait waits in the runtime poller until the socket is ready for dir,
// its deadline passes or s is closed, and unlocks s.pmu, which the caller
// holds. It returns whether ep could watch the socket. The caller looks
// again.
func (s *socket) pollWait(dir int) (armed bool) {
	defer s.pmu.Unlock()
	s.dmu.Lock()
	s.ep.SetReadDeadline(s.dl[dir])
	s.dmu.Unlock()
	// Read calls f, and again each time ep is ready, until f returns true:
	// first f makes ep watch the socket for dir (readiness that came since
	// the syscall makes ep ready at once), then it ends the wait.
	s.rc.Read(func(ep uintptr) bool {
		if !armed {
			ev := unix.EpollEvent{Events: [2]uint32{unix.EPOLLIN | unix.EPOLLRDHUP, unix.EPOLLOUT}[dir], Fd: int32(s.fd)}
			armed = unix.EpollCtl(int(ep), unix.EPOLL_CTL_ADD, s.fd, &ev) == nil
			return !armed
		}
		return true
	})
	if armed {
		s.rc.Control(func(ep uintptr) { unix.EpollCtl(int(ep), unix.EPOLL_CTL_DEL, s.fd, nil) })
	}
	return armed
}

// setDeadline sets dir's deadline, and makes the calls waiting look again:
// the one in the poller at a past deadline of ep, the one in the kernel at
// efd.
func (s *socket) setDeadline(dir int, t time.Time) error {
	if s.closed.Load() {
		return net.ErrClosed
	}
	s.dmu.Lock()
	s.dl[dir] = t
	s.ep.SetReadDeadline(time.Unix(1, 0))
	s.dmu.Unlock()
	if s.kmu.TryLock() {
		s.kmu.Unlock()
	} else {
		s.use(s.wake)
	}
	return nil
}

// wake ends the wait of the call waiting in the kernel, if any.
func (s *socket) wake(int) error {
	_, err := unix.Write(s.efd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	return err
}

// close closes the socket; calls waiting on it return net.ErrClosed.
func (s *socket) close() error {
	if s.closed.Swap(true) {
		return net.ErrClosed
	}
	s.wake(0)
	s.ep.Close() // wakes the poller's waiter
	s.mu.Lock()  // waits for every use in progress
	defer s.mu.Unlock()
	unix.Close(s.efd)
	return unix.Close(s.fd)
}

// use runs f on the socket, which stays open meanwhile; it returns
// net.ErrClosed once s is closed.
func (s *socket) use(f func(fd int) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed.Load() {
		return net.ErrClosed
	}
	return f(s.fd)
}

// bindAuto binds the socket to an address of the kernel's choosing, in the
// abstract namespace: its peer then sees an address, even once it is gone.
func (s *socket) bindAuto() error {
	return s.use(func(fd int) error { return unix.Bind(fd, &unix.SockaddrUnix{}) })
}

// peerBound says whether the peer's socket was bound, even if it is gone.
func (s *socket) peerBound() bool {
	var sa unix.Sockaddr
	s.use(func(fd int) (err error) { sa, err = unix.Getpeername(fd); return err })
	u, ok := sa.(*unix.SockaddrUnix)
	return ok && len(u.Name) > 1 // not "", nor "@", the unbound peer's
}

// shutdownWrite shuts down the socket's sending side.
func (s *socket) shutdownWrite() error {
	s.wshut.Store(true)
	return s.use(func(fd int) error { return unix.Shutdown(fd, unix.SHUT_WR) })
}

// dup returns a close-on-exec duplicate of the socket.
func (s *socket) dup() (dup int, err error) {
	err = s.use(func(fd int) (err error) { dup, err = unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0); return err })
	return dup, err
}

// msg makes dir's sendmsg or recvmsg call on fd, of the bytes of head then
// p and the control bytes oob, and returns the bytes moved and, for
// recvmsg, the control bytes received and msg_flags. Calls never wait
// (MSG_DONTWAIT), so they are raw syscalls: skipping the runtime's
// entersyscall spares a wake-up of its sysmon.
func msg(dir, fd int, head, p, oob []byte) (n, oobn, flags int, err error) {
	// The kernel skips empty buffers; SliceData is nil for nil ones.
	iov := [2]unix.Iovec{{Base: unsafe.SliceData(head)}, {Base: unsafe.SliceData(p)}}
	iov[0].SetLen(len(head))
	iov[1].SetLen(len(p))
	h := unix.Msghdr{Iov: &iov[0], Iovlen: 2, Control: unsafe.SliceData(oob)}
	h.SetControllen(len(oob))
	// MSG_NOSIGNAL: a cgo host may not ignore SIGPIPE as Go does.
	trap := [2]uintptr{unix.SYS_RECVMSG, unix.SYS_SENDMSG}[dir]
	fl := unix.MSG_DONTWAIT | [2]int{unix.MSG_CMSG_CLOEXEC, unix.MSG_NOSIGNAL}[dir]
	// A SEQPACKET peer that closed with our data unread makes recvmsg fail
	// once with ECONNRESET, before the datagrams it had sent us; sendmsg
	// too, then EPIPE: both mean it is gone.
	r, _, e := unix.RawSyscall(trap, uintptr(fd), uintptr(unsafe.Pointer(&h)), uintptr(fl))
	for dir == reading && e == unix.ECONNRESET {
		r, _, e = unix.RawSyscall(trap, uintptr(fd), uintptr(unsafe.Pointer(&h)), uintptr(fl))
	}
	switch {
	case e == unix.ECONNRESET:
		return 0, 0, 0, fmt.Errorf("%w (%w)", e, unix.EPIPE)
	case e != 0:
		return 0, 0, 0, e
	case dir == reading && r == 0 && h.Controllen == 0 && peerGone(fd):
		return 0, 0, 0, io.EOF
	}
	return int(r), int(h.Controllen), int(h.Flags), nil
}

// peerGone tells an end of input from an empty datagram, which recvmsg
// reports alike: the peer is gone when our receive side is shut down and
// nothing is queued.
func peerGone(fd int) bool {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
	n, err := unix.Poll(pfd, 0)
	queued, err2 := unix.IoctlGetInt(fd, unix.SIOCINQ)
	return err == nil && n == 1 && pfd[0].Revents&(unix.POLLRDHUP|unix.POLLHUP) != 0 && err2 == nil && queued == 0
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
			unix.Close(int(*(*int32)(unsafe.Pointer(&m.Data[0]))))
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
