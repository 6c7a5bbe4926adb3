//go:build linux

package channel

// Tests of the waits (fds.go): a Conn sends no signal, leaves the socket as
// it found it, ends its waits promptly in every phase, holds at most three
// descriptors, and no thread once a wait has lasted a few milliseconds.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// inKernelWait starts a Recv on c that awaits an answer, and returns once it
// waits in the kernel: c sends a request first. For the test, a wait there
// lasts until Close or the deadline.
func inKernelWait(t *testing.T, c *Conn) <-chan error {
	t.Helper()
	c.s.kmax = time.Minute
	if err := c.Send("request"); err != nil {
		t.Fatal(err)
	}
	done := result(func() error { return c.Recv(new(any)) })
	waitState(t, "[syscall", "(*Conn).Recv")
	return done
}

// TestNoSignals: Close and moved deadlines, while a Recv waits in the
// kernel, make no call elsewhere in the program fail with EINTR.
func TestNoSignals(t *testing.T) {
	r, w := pipe(t)
	rc, _ := r.SyscallConn()
	eintr := make(chan int, 1)
	go func() {
		n := 0
		rc.Control(func(fd uintptr) {
			for {
				_, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, -1)
				if err != unix.EINTR {
					break
				}
				n++
			}
		})
		eintr <- n
	}()
	waitState(t, "[syscall", "unix.Poll")
	for i := range 40 {
		a, b := pair(t)
		done := inKernelWait(t, a)
		if i%2 == 0 {
			a.Close()
		} else {
			a.SetReadDeadline(time.Now())
		}
		if err := await(t, done, "Recv"); err == nil {
			t.Fatalf("Recv() = nil, want an error")
		}
		a.Close()
		b.Close()
	}
	w.Write([]byte{1})
	select {
	case n := <-eintr:
		if n != 0 {
			t.Errorf("unix.Poll(-1) elsewhere failed %d times with EINTR during 20 Close and 20 SetReadDeadline calls, want 0", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("unix.Poll still blocked 10s after its pipe was written")
	}
}

// TestNoSIGURG: a program that asks for SIGURG (signal.Notify), with the
// runtime's own preemption signals off (GODEBUG=asyncpreemptoff=1), gets
// none from 20 Close calls and 20 moved deadlines while Recvs wait in the
// kernel.
func TestNoSIGURG(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := CommandContext(ctx, "count-sigurg")
	cmd.Env = append(cmd.Env, "GODEBUG=asyncpreemptoff=1")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	c, err := Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer c.Close()
	c.SetDeadline(bounded())
	var n int
	if err := c.Recv(&n); err != nil {
		t.Fatalf("Recv() = %v; child: %s", err, stderr.String())
	}
	if n != 0 {
		t.Errorf("signal.Notify(SIGURG) got %d signals during 20 Close and 20 SetReadDeadline calls, want 0", n)
	}
}

// countSIGURG is TestNoSIGURG's child.
func countSIGURG(c *Conn) error {
	urg := make(chan os.Signal, 1000)
	signal.Notify(urg, syscall.SIGURG)
	for i := range 40 {
		a, b, err := Pair()
		if err != nil {
			return err
		}
		a.s.kmax = time.Minute
		a.Send("request")
		done := make(chan error, 1)
		go func() { done <- a.Recv(new(any)) }()
		for deadline := time.Now().Add(10 * time.Second); !stackHas("(*Conn).Recv", "[syscall"); {
			if time.Now().After(deadline) {
				return errors.New("no Recv waiting in the kernel after 10s")
			}
		}
		if i%2 == 0 {
			a.Close()
		} else {
			a.SetReadDeadline(time.Now())
		}
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			return errors.New("Recv still blocked 10s after Close or a deadline")
		}
		a.Close()
		b.Close()
	}
	time.Sleep(50 * time.Millisecond) // for a signal still in flight
	return c.Send(len(urg))
}

// TestFileStaysPlain: a File duplicate works as the plain, blocking socket
// it was, for a python3 reader in another process and for unix.Read on
// File().Fd(), while the Conn is in use.
func TestFileStaysPlain(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("this test needs python3 on the PATH: %v", err)
	}
	t.Run("python3 recv", func(t *testing.T) {
		a, b := pair(t)
		f, err := a.File()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(python, "-c", `import socket, sys
s = socket.socket(fileno=3)
print("ready", flush=True)
sys.stdout.write(s.recv(100)[8:].decode() + "\n")`)
		cmd.ExtraFiles = []*os.File{f}
		cmd.Stderr = os.Stderr
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		f.Close()
		defer cmd.Wait()
		defer cmd.Process.Kill()
		lines := make(chan string, 2)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		line := func() string {
			select {
			case l := <-lines:
				return l
			case <-time.After(10 * time.Second):
				t.Fatal("python3 said nothing for 10s")
				return ""
			}
		}
		if l := line(); l != "ready" {
			t.Fatalf("python3 said %q, want ready", l)
		}
		// Later than a few milliseconds: a timeout left on the socket by
		// the Conn would end python's recv first.
		time.Sleep(100 * time.Millisecond)
		if err := b.Send("hello"); err != nil {
			t.Fatal(err)
		}
		if l := line(); l != `"hello"` {
			t.Fatalf("python3's blocking recv got %q, want %q", l, `"hello"`)
		}
	})
	t.Run("unix.Read on Fd", func(t *testing.T) {
		a, b := pair(t)
		f, err := a.File()
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		fd := int(f.Fd())
		got := make(chan error, 1)
		go func() {
			buf := make([]byte, 100)
			n, err := unix.Read(fd, buf)
			if err == nil && string(buf[headerLen:n]) != `"hello"` {
				err = fmt.Errorf("read %q", buf[:n])
			}
			got <- err
		}()
		waitState(t, "[syscall", "unix.Read")
		time.Sleep(100 * time.Millisecond)
		if err := b.Send("hello"); err != nil {
			t.Fatal(err)
		}
		if err := await(t, got, "unix.Read"); err != nil {
			t.Fatalf("unix.Read on File().Fd() = %v, want the message", err)
		}
	})
}

// sockState is what FileConn must leave as it found it.
func sockState(t *testing.T, fd int) string {
	t.Helper()
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		t.Fatal(err)
	}
	var s string
	for _, opt := range []int{unix.SO_RCVTIMEO, unix.SO_SNDTIMEO} {
		tv, err := unix.GetsockoptTimeval(fd, unix.SOL_SOCKET, opt)
		if err != nil {
			t.Fatal(err)
		}
		s += fmt.Sprintf(" timeo=%v", *tv)
	}
	return fmt.Sprintf("nonblock=%v%s", fl&unix.O_NONBLOCK != 0, s)
}

// TestFileConnLeavesSocket: FileConn, and a Conn's use of the socket,
// change neither the description's mode nor the socket's options; and
// whatever a holder sets on them afterwards, deadlines and Close hold.
func TestFileConnLeavesSocket(t *testing.T) {
	for _, nonblock := range []bool{false, true} {
		t.Run(fmt.Sprintf("nonblock=%v", nonblock), func(t *testing.T) {
			fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			f := os.NewFile(uintptr(fds[0]), "a")
			defer f.Close()
			rc, _ := f.SyscallConn()
			var fd int
			rc.Control(func(s uintptr) { fd = int(s) })
			unix.SetNonblock(fd, nonblock)
			before := sockState(t, fd)
			a, err := FileConn(f)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			fb := os.NewFile(uintptr(fds[1]), "b")
			b, err := FileConn(fb)
			fb.Close()
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if got := sockState(t, fd); got != before {
				t.Errorf("after FileConn: %s, want %s", got, before)
			}
			done := inKernelWait(t, a)
			if got := sockState(t, fd); got != before {
				t.Errorf("while Recv waits: %s, want %s", got, before)
			}
			b.Send("answer")
			if err := await(t, done, "Recv"); err != nil {
				t.Fatal(err)
			}
			// Another holder sets a receive timeout of 2 s: a 100 ms
			// deadline still ends a Recv at 100 ms.
			tv := unix.Timeval{Sec: 2}
			unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
			unix.SetNonblock(fd, !nonblock)
			a.Send("request")
			start := time.Now()
			a.SetReadDeadline(start.Add(100 * time.Millisecond))
			if err := a.Recv(new(any)); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("Recv() = %v, want os.ErrDeadlineExceeded", err)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("a 100ms deadline ended Recv after %v with a holder's 2s SO_RCVTIMEO", d)
			}
			a.SetReadDeadline(time.Time{})
			done = inKernelWait(t, a)
			a.Close()
			if err := await(t, done, "Recv at Close"); !errors.Is(err, net.ErrClosed) {
				t.Fatalf("Recv() = %v, want net.ErrClosed", err)
			}
		})
	}
}

// TestFileConnFailsCleanly: a FileConn that fails, here for want of
// descriptors, leaves the caller's socket as it was.
func TestFileConnFailsCleanly(t *testing.T) { childSaysOK(t, "fileconn-at-limit") }

// childSaysOK runs the named child, which sends "ok" or what went wrong.
func childSaysOK(t *testing.T, name string) {
	t.Helper()
	c, cmd, stderr := start(t, name)
	var got string
	if err := c.Recv(&got); err != nil {
		t.Fatalf("Recv() = %v; child: %s", err, stderr)
	}
	if got != "ok" {
		t.Error(got)
	}
	c.Close()
	cmd.Wait()
}

// fileConnAtLimit is the child of TestFileConnFailsCleanly: at
// RLIMIT_NOFILE with room for the duplicate only, FileConn fails.
func fileConnAtLimit(c *Conn) error {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	tv := unix.Timeval{Usec: 300}
	unix.SetsockoptTimeval(fds[0], unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	before := fmt.Sprint(unix.FcntlInt(uintptr(fds[0]), unix.F_GETFL, 0))
	before += fmt.Sprint(unix.GetsockoptTimeval(fds[0], unix.SOL_SOCKET, unix.SO_RCVTIMEO))
	f := os.NewFile(uintptr(fds[0]), "a")
	n := fdCount(nil)
	restore, err := atLimit(1) // room for FileConn's duplicate alone
	if err != nil {
		return err
	}
	_, ferr := FileConn(f)
	restore()
	after := fmt.Sprint(unix.FcntlInt(uintptr(fds[0]), unix.F_GETFL, 0))
	after += fmt.Sprint(unix.GetsockoptTimeval(fds[0], unix.SOL_SOCKET, unix.SO_RCVTIMEO))
	switch {
	case ferr == nil:
		return c.Send("FileConn succeeded at the limit")
	case after != before:
		return c.Send(fmt.Sprintf("FileConn failed (%v) and left %s, was %s", ferr, after, before))
	case fdCount(nil) != n:
		return c.Send(fmt.Sprintf("FileConn failed (%v) and left %d descriptors, was %d", ferr, fdCount(nil), n))
	}
	return c.Send("ok")
}

// atLimit puts the process at RLIMIT_NOFILE with room for n more
// descriptors: it fills every free number below the new limit but n.
// restore closes what it opened and restores the limit.
func atLimit(n int) (restore func(), err error) {
	var fill []int
	for len(fill) == 0 || fill[len(fill)-1] < 200 {
		fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			closeFds(fill)
			return nil, err
		}
		fill = append(fill, fd)
	}
	limit := fill[len(fill)-1] + 1
	closeFds(fill[len(fill)-n:])
	fill = fill[:len(fill)-n]
	var lim unix.Rlimit
	unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: uint64(limit), Max: lim.Max}); err != nil {
		closeFds(fill)
		return nil, err
	}
	return func() { unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); closeFds(fill) }, nil
}

// TestClosePrompt: Close ends a Recv waiting in the kernel within a few
// milliseconds, with 1,000 threads in the process.
func TestClosePrompt(t *testing.T) {
	release := make(chan struct{})
	var wg sync.WaitGroup
	for range 1000 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			<-release
		}()
	}
	defer wg.Wait()
	defer close(release)
	var took []time.Duration
	for range 11 {
		a, _ := pair(t)
		done := inKernelWait(t, a)
		start := time.Now()
		a.Close()
		if err := await(t, done, "Recv at Close"); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Recv() = %v, want net.ErrClosed", err)
		}
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	if took[5] > 5*time.Millisecond {
		t.Errorf("with 1,000 threads, Close to Recv's return took %v (sorted), want a median under 5ms", took)
	}
}

// TestCloseManyAtOnce: 40 Conns closed at once from 40 goroutines, their
// Recvs waiting in the kernel or in the poller: the last Recv returns
// within a few milliseconds.
func TestCloseManyAtOnce(t *testing.T) {
	const n = 40
	for _, where := range []string{"kernel", "poller"} {
		var took []time.Duration
		for range 5 {
			var conns []*Conn
			var dones []<-chan error
			for range n {
				a, _ := pair(t)
				conns = append(conns, a)
				if where == "kernel" {
					dones = append(dones, inKernelWait(t, a))
				} else {
					dones = append(dones, result(func() error { return a.Recv(new(any)) }))
				}
			}
			for deadline := time.Now().Add(10 * time.Second); where == "poller"; {
				buf := make([]byte, 1<<20)
				if strings.Count(string(buf[:runtime.Stack(buf, true)]), "[IO wait") >= n {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the Recvs do not all wait in the poller after 10s")
				}
				time.Sleep(time.Millisecond)
			}
			var wg sync.WaitGroup
			gate := make(chan struct{})
			for _, c := range conns {
				wg.Add(1)
				go func() { defer wg.Done(); <-gate; c.Close() }()
			}
			start := time.Now()
			close(gate)
			for _, d := range dones {
				if err := await(t, d, "Recv at Close"); !errors.Is(err, net.ErrClosed) {
					t.Fatalf("Recv() = %v, want net.ErrClosed", err)
				}
			}
			took = append(took, time.Since(start))
			wg.Wait()
		}
		slices.Sort(took)
		if took[0] > 5*time.Millisecond { // the best of 5: the race detector on a loaded machine
			t.Errorf("waiting in the %s: 40 Conns closed at once, the last Recv returned after %v (sorted), want under 5ms", where, took)
		}
	}
}

// TestDeadlineMovedInKernel: a deadline moved near while a Recv waits in
// the kernel ends it at once. The Conn's Send waits in the poller
// meanwhile, so that the Recv stays in the kernel for the whole test.
func TestDeadlineMovedInKernel(t *testing.T) {
	a, b := pair(t)
	fill(t, a)
	sent := result(func() error { return a.Send("more") })
	waitBlocked(t, "(*Conn).Send")
	done := result(func() error { return a.Recv(new(any)) })
	waitState(t, "[syscall", "(*Conn).Recv")
	time.Sleep(20 * time.Millisecond) // many kernel waits long
	start := time.Now()
	a.SetReadDeadline(start)
	if err := await(t, done, "Recv"); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Recv() = %v, want os.ErrDeadlineExceeded", err)
	}
	if d := time.Since(start); d > 20*time.Millisecond {
		t.Errorf("Recv returned %v after its deadline was moved to now", d)
	}
	// And the Send still completes when the peer reads.
	drain(t, b, sent)
	if err := await(t, sent, "Send"); err != nil {
		t.Fatalf("Send() = %v", err)
	}
}

// TestDeadlineLateness: a Recv with a deadline returns at it, whichever
// phase it waits in, and not more than a few milliseconds late.
func TestDeadlineLateness(t *testing.T) {
	a, b := pair(t)
	for _, d := range []time.Duration{time.Millisecond, 10 * time.Millisecond, 50 * time.Millisecond} {
		var late []time.Duration
		for range 5 {
			if err := a.Send("request"); err != nil { // the Recv awaits an answer
				t.Fatal(err)
			}
			if err := b.Recv(new(any)); err != nil {
				t.Fatal(err)
			}
			dl := time.Now().Add(d)
			a.SetReadDeadline(dl)
			if err := a.Recv(new(any)); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("Recv() = %v, want os.ErrDeadlineExceeded", err)
			}
			if time.Now().Before(dl) {
				t.Fatalf("deadline %v: Recv returned before it", d)
			}
			late = append(late, time.Since(dl))
		}
		slices.Sort(late)
		if late[2] > 5*time.Millisecond {
			t.Errorf("deadline %v: Recv returned late by %v (sorted)", d, late)
		}
	}
}

// drain receives on c until done has a result.
func drain(t *testing.T, c *Conn, done <-chan error) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for len(done) == 0 {
		if err := c.Recv(new(any)); err != nil {
			t.Fatalf("Recv() while draining = %v", err)
		}
	}
	c.SetReadDeadline(bounded())
}

// waitingThreads counts the threads of this process in ppoll or recvmsg.
func waitingThreads(t *testing.T) int {
	tasks, err := filepath.Glob("/proc/self/task/*/syscall")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		for _, sys := range []int{unix.SYS_PPOLL, unix.SYS_RECVMSG, unix.SYS_POLL, unix.SYS_SENDMSG} {
			if strings.HasPrefix(string(b), fmt.Sprint(sys)+" ") {
				n++
			}
		}
	}
	return n
}

// TestWaitingRecvsHoldNoThreads: 40 Recvs that have waited 300 ms hold no
// thread in a waiting syscall.
func TestWaitingRecvsHoldNoThreads(t *testing.T) {
	const n = 40
	var dones []<-chan error
	for range n {
		a, _ := pair(t)
		a.Send("request") // each Recv awaits an answer: it waits in the kernel first
		dones = append(dones, result(func() error { return a.Recv(new(any)) }))
	}
	time.Sleep(300 * time.Millisecond)
	buf := make([]byte, 1<<20)
	if waiting := strings.Count(string(buf[:runtime.Stack(buf, true)]), "[IO wait"); waiting < n {
		t.Errorf("after 300ms, %d of %d Recvs wait in the poller", waiting, n)
	}
	if k := waitingThreads(t); k != 0 {
		t.Errorf("after 300ms, %d threads in ppoll or recvmsg, want 0", k)
	}
	for _, d := range dones {
		select {
		case err := <-d:
			t.Fatalf("Recv() returned early: %v", err)
		default:
		}
	}
}

// TestDescriptorsPerConn: a Conn holds at most 3 descriptors, all made with
// it: a Send that waits makes none.
func TestDescriptorsPerConn(t *testing.T) {
	checkFds(t)
	before := fdCount(t)
	a, b, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	made := fdCount(t)
	if made-before > 6 {
		t.Errorf("a Pair holds %d descriptors, want at most 6: %v", made-before, fdNames(t))
	}
	fill(t, a)
	a.SetWriteDeadline(time.Now().Add(20 * time.Millisecond))
	if err := a.Send("waits"); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Send() = %v, want os.ErrDeadlineExceeded", err)
	}
	a.Send("request")
	b.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	for b.Recv(new(any)) == nil {
	}
	if now := fdCount(t); now != made {
		t.Errorf("after waits: %d descriptors, want %d as when the Pair was made", now, made)
	}
	a.Close()
	b.Close()
}

// TestSendWaitsAtLimit: a Send that must wait while the process is at
// RLIMIT_NOFILE waits, and succeeds when the peer reads.
func TestSendWaitsAtLimit(t *testing.T) { childSaysOK(t, "send-at-limit") }

// sendAtLimit is the child of TestSendWaitsAtLimit.
func sendAtLimit(c *Conn) error {
	a, b, err := Pair()
	if err != nil {
		return err
	}
	defer a.Close()
	defer b.Close()
	// Fill b's queue through a duplicate, so that no Send of a's has
	// waited yet.
	f, err := a.File()
	if err != nil {
		return err
	}
	rc, _ := f.SyscallConn()
	rc.Control(func(fd uintptr) {
		for unix.Sendmsg(int(fd), frame(1, "1"), nil, nil, unix.MSG_DONTWAIT) == nil {
		}
	})
	f.Close()
	a.SetWriteDeadline(time.Now().Add(10 * time.Second))
	restore, err := atLimit(0)
	if err != nil {
		return err
	}
	sent := make(chan error, 1)
	go func() { sent <- a.Send("at the limit") }()
	for deadline := time.Now().Add(10 * time.Second); !stackHas("(*Conn).Send", "[IO wait", "[syscall"); {
		if len(sent) > 0 {
			restore()
			return c.Send(fmt.Sprintf("Send at RLIMIT_NOFILE returned at once: %v", <-sent))
		}
		if time.Now().After(deadline) {
			return c.Send("the Send never waited")
		}
		runtime.Gosched()
	}
	b.SetReadDeadline(time.Now().Add(10 * time.Second))
	for len(sent) == 0 && b.Recv(new(any)) == nil {
	}
	err = <-sent
	restore()
	if err != nil {
		return c.Send(fmt.Sprintf("Send at RLIMIT_NOFILE: %v", err))
	}
	return c.Send("ok")
}

// TestCloseRacingRecv closes a Conn while its Recv starts, and at once
// makes a new channel, whose socket takes the closed one's number: the old
// Recv must not read the new channel's message.
func TestCloseRacingRecv(t *testing.T) {
	checkFds(t)
	for i := range 200 {
		a, b, err := Pair()
		if err != nil {
			t.Fatal(err)
		}
		if i%3 == 0 {
			a.Send("request") // the Recv waits in the kernel
		}
		done := result(func() error { return a.Recv(new(any)) })
		if i%2 == 0 {
			runtime.Gosched()
		}
		a.Close()
		x, y, err := Pair()
		if err != nil {
			t.Fatal(err)
		}
		if err := y.Send(i); err != nil {
			t.Fatal(err)
		}
		if err := await(t, done, "Recv at Close"); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("round %d: Recv() racing Close = %v, want net.ErrClosed", i, err)
		}
		var got int
		x.SetReadDeadline(time.Now().Add(10 * time.Second))
		if err := x.Recv(&got); err != nil || got != i {
			t.Fatalf("round %d: the new channel's Recv() = %d, %v", i, got, err)
		}
		b.Close()
		x.Close()
		y.Close()
	}
}

// stackHas reports whether a goroutine is inside fn in one of states.
func stackHas(fn string, states ...string) bool {
	buf := make([]byte, 1<<20)
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		for _, st := range states {
			if strings.Contains(g, st) && strings.Contains(g, fn) {
				return true
			}
		}
	}
	return false
}
