//go:build linux

// sendmsg and recvmsg through the runtime poller, and SCM_RIGHTS.
//
// Why the poller, with raw syscalls: the socket is non-blocking and every
// wait goes through the Go runtime poller, which gives, for nothing,
// deadlines that take effect when moved during a wait, a Close that wakes
// every waiter, and no OS thread held by a blocked call. The sendmsg and
// recvmsg themselves are raw syscalls (see msg). Measured with bench.sh on
// a 2-core VM, a small round trip through syscall.Syscall was 1.41x the
// poller floor, because entering a syscall that way wakes the runtime's
// sysmon thread when it sleeps; raw calls brought it to 1.09-1.17x.
// Blocking in ppoll(2) on the socket and an eventfd (to honour moved
// deadlines and Close) measured 52.5 µs per round trip against the poller
// floor's 49.7 µs in the same run: not faster, and it holds a thread per
// wait. Blocking in recvmsg and sendmsg themselves (through
// syscall.Syscall, so that the runtime can take the P back) measured
// 46.5 µs against this design's 43.3 µs (medians of 11 interleaved rounds),
// and that prototype had none of the machinery it would need: a thread per
// blocked call, shutdown(2) for Close, signals to honour a deadline moved
// during a wait. The bound on any such design, the blocking floor doing
// the JSON work of the four verbs and nothing else (bench
// impl=blocking+api), measured 40.7 µs in those rounds.

package channel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
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

// sysop is one sendmsg or recvmsg, in a form that the runtime poller can
// retry. Its fn is bound once, so that a call allocates nothing.
type sysop struct {
	rc   syscall.RawConn
	fn   func(fd uintptr) bool
	head []byte // sendmsg only: sent before p, in the same datagram
	p    []byte
	oob  []byte
	n    int
	oobn int
	flag int // recvmsg's msg_flags
	err  error
}

func newSendOp(rc syscall.RawConn) *sysop {
	op := &sysop{rc: rc}
	op.fn = op.sendmsg
	return op
}

func newRecvOp(rc syscall.RawConn) *sysop {
	op := &sysop{rc: rc, oob: make([]byte, unix.CmsgSpace(maxFds*4)+oobExtra)}
	op.fn = op.recvmsg
	return op
}

func (op *sysop) sendmsg(fd uintptr) bool {
	// MSG_NOSIGNAL: a cgo host may not ignore SIGPIPE as Go does.
	// MSG_DONTWAIT: the socket's O_NONBLOCK is shared with every duplicate,
	// and anyone may clear it; a raw call must never sleep.
	for {
		op.n, _, _, op.err = msg(unix.SYS_SENDMSG, fd, op.head, op.p, op.oob, unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT)
		if op.err != unix.EINTR {
			return op.err != unix.EAGAIN
		}
	}
}

func (op *sysop) recvmsg(fd uintptr) bool {
	for {
		op.n, op.oobn, op.flag, op.err = msg(unix.SYS_RECVMSG, fd, nil, op.p, op.oob, unix.MSG_CMSG_CLOEXEC|unix.MSG_DONTWAIT)
		// A SEQPACKET peer that closed with our data unread makes the kernel
		// report ECONNRESET once, before the datagrams it had sent us.
		if op.err != unix.ECONNRESET && op.err != unix.EINTR {
			return op.err != unix.EAGAIN
		}
	}
}

// msg makes one sendmsg or recvmsg call on the bytes of head then p, and
// returns the bytes moved and, for recvmsg, the control bytes received and
// msg_flags.
//
// It is a raw syscall: the callers pass MSG_DONTWAIT, so the call never
// waits, whatever the mode of the socket's file description,
// and skipping the runtime's entersyscall spares a wake-up of its sysmon
// thread per call, which measured as a large part of a round trip. A call
// that never sleeps is not interrupted by signals; the callers retry EINTR
// all the same, at the cost of one comparison.
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
	r, _, e := unix.RawSyscall(trap, fd, uintptr(unsafe.Pointer(&h)), uintptr(flags))
	if e != 0 {
		return 0, 0, 0, e
	}
	return int(r), int(h.Controllen), int(h.Flags), nil
}

// send sends head then p, with the control data oob, as one datagram.
func (op *sysop) send(head, p, oob []byte) error {
	op.head, op.p, op.oob = head, p, oob
	err := op.rc.Write(op.fn)
	op.head, op.p, op.oob = nil, nil, nil
	if op.err == unix.ECONNRESET {
		// A peer that closed with our data unread: the next sendmsg says
		// ECONNRESET, the one after EPIPE. Both mean the peer is gone.
		op.err = errPeerReset{}
	}
	return opErr("sendmsg", err, op.err)
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
	err = op.rc.Read(op.fn)
	op.p = nil
	if err = opErr("recvmsg", err, op.err); err != nil {
		return 0, fds, 0, err
	}
	k := len(fds)
	fds = parseRights(op.oob[:op.oobn], fds)
	if op.n == 0 && len(fds) == k && op.peerGone() {
		return 0, fds, op.flag, io.EOF
	}
	return op.n, fds, op.flag, nil
}

// peerGone tells an end of input from an empty datagram, which recvmsg
// reports alike: the peer is gone when our receive side is shut down and
// nothing is queued.
func (op *sysop) peerGone() bool {
	gone := false
	op.rc.Control(func(fd uintptr) {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
		if n, err := unix.Poll(pfd, 0); err != nil || n == 0 || pfd[0].Revents&(unix.POLLRDHUP|unix.POLLHUP) == 0 {
			return
		}
		queued, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ)
		gone = err == nil && queued == 0
	})
	return gone
}

// opErr turns the poller's error, or else the syscall's, into ours.
func opErr(name string, pollErr, sysErr error) error {
	if pollErr != nil {
		// The poller wraps net.ErrClosed and os.ErrDeadlineExceeded in a
		// *net.OpError whose text names raw-read; keep only the cause.
		var oe *net.OpError
		if errors.As(pollErr, &oe) {
			pollErr = oe.Err
		}
		return fmt.Errorf("channel: %s: %w", name, pollErr)
	}
	if sysErr != nil {
		return fmt.Errorf("channel: %w", os.NewSyscallError(name, sysErr))
	}
	return nil
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
