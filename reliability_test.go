//go:build linux

package channel

// Tests of what a socket may meet besides its peer's messages: a blocking
// mode set by another holder, socket options that add control messages,
// a peer gone with our data unread, a panic in the caller's code.

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func init() {
	// The reproductions of a process frozen by a socket switched to
	// blocking mode run in a child, so that a freeze fails the test (the
	// parent kills the child) instead of hanging it.
	Register("freeze-gc", func(*Conn) error {
		before := fdCount(nil)
		a, b, err := Pair()
		if err != nil {
			return err
		}
		defer b.Close()
		defer a.Close()
		f, err := a.File()
		if err != nil {
			return err
		}
		f.Fd() // switches the shared file description to blocking mode
		f.Close()
		a.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		errc := make(chan error, 1)
		go func() {
			var v any
			errc <- a.Recv(&v)
		}()
		// Collect garbage once Recv is under way, blocked or polling.
		buf := make([]byte, 1<<16)
		for !strings.Contains(string(buf[:runtime.Stack(buf, true)]), "(*Conn).Recv(") {
			runtime.Gosched()
		}
		runtime.GC()
		if err := <-errc; !errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("Recv() error = %v, want os.ErrDeadlineExceeded", err)
		}
		// Close unblocks a Recv without a deadline, still in blocking mode.
		a.SetReadDeadline(time.Time{})
		go func() {
			var v any
			errc <- a.Recv(&v)
		}()
		for !strings.Contains(string(buf[:runtime.Stack(buf, true)]), "(*Conn).Recv(") {
			runtime.Gosched()
		}
		a.Close()
		if err := <-errc; !errors.Is(err, net.ErrClosed) {
			return fmt.Errorf("Recv() after Close: error = %v, want net.ErrClosed", err)
		}
		b.Close()
		if after := fdCount(nil); after != before {
			return fmt.Errorf("open descriptors: %d before, %d after", before, after)
		}
		return nil
	})
	Register("freeze-fileconn", func(*Conn) error {
		runtime.GOMAXPROCS(1)
		a, b, err := Pair()
		if err != nil {
			return err
		}
		defer b.Close()
		defer a.Close()
		f2, err := a.File()
		if err != nil {
			return err
		}
		defer f2.Close()
		stop := time.Now().Add(3 * time.Second)
		looped := make(chan struct{})
		defer func() { <-looped }() // before f2.Close
		go func() {
			defer close(looped)
			for time.Now().Before(stop) {
				// net.FileConn flips the shared mode for a moment.
				if x, err := FileConn(f2); err == nil {
					x.Close()
				}
			}
		}()
		for time.Now().Before(stop) {
			a.SetReadDeadline(time.Now().Add(100 * time.Microsecond))
			var v any
			if err := a.Recv(&v); !errors.Is(err, os.ErrDeadlineExceeded) {
				return fmt.Errorf("Recv() error = %v, want os.ErrDeadlineExceeded", err)
			}
		}
		return nil
	})
}

// TestBlockingModeNoFreeze: with the socket's file description switched
// to blocking mode by another holder, deadlines fire and the garbage
// collector runs. Each reproduction runs in a child bounded in time.
func TestBlockingModeNoFreeze(t *testing.T) {
	for _, name := range []string{"freeze-gc", "freeze-fileconn"} {
		t.Run(name, func(t *testing.T) {
			cmd := Command(name)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			c, err := Start(cmd)
			if err != nil {
				t.Fatalf("Start() error = %v", err)
			}
			defer c.Close()
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("child: %v\n%s", err, stderr.String())
				}
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				<-done
				t.Fatalf("child frozen for 30 s\n%s", stderr.String())
			}
		})
	}
}

// TestSendAfterResetIsEPIPE: a peer that closed with our message unread
// makes Linux answer ECONNRESET; Send reports it as EPIPE all the same.
func TestSendAfterResetIsEPIPE(t *testing.T) {
	checkFds(t)
	a, b, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.Send("x"); err != nil {
		t.Fatalf("Send() error = %v", err)
	}
	b.Close()
	for i := 0; i < 2; i++ {
		if err := a.Send("y"); !errors.Is(err, syscall.EPIPE) {
			t.Fatalf("Send() %d after the peer closed: error = %v, want EPIPE", i, err)
		}
	}
}

// TestSendCutByResetIsEPIPE: a peer gone in the middle of a long message,
// with data unread, breaks the send side with an error matching EPIPE.
func TestSendCutByResetIsEPIPE(t *testing.T) {
	checkFds(t)
	a, peer := rawPair(t)
	errc := make(chan error, 1)
	go func() { errc <- a.Send(jsonString(4 << 20)) }()
	buf := make([]byte, 1<<20)
	if _, err := unix.Read(peer, buf); err != nil { // one datagram
		t.Fatal(err)
	}
	// Then gone with the next datagram unread, which makes Linux answer
	// the sender's next sendmsg with ECONNRESET.
	pfd := []unix.PollFd{{Fd: int32(peer), Events: unix.POLLIN}}
	if n, err := unix.Poll(pfd, 10000); n != 1 || err != nil {
		t.Fatalf("poll for the second datagram: %d, %v", n, err)
	}
	unix.Close(peer)
	if err := await(t, errc, "Send"); !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("Send() cut short: error = %v, want EPIPE", err)
	}
	if err := a.Send("z"); !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("Send() after a cut message: error = %v, want EPIPE", err)
	}
}

// TestOptionsAddingControl: options that make the kernel add a control
// message of its own to every datagram cost no files, even at 253.
func TestOptionsAddingControl(t *testing.T) {
	files, _ := pipes(t, maxFds)
	for _, opt := range []struct {
		name string
		opt  int
	}{{"SO_PASSCRED", unix.SO_PASSCRED}, {"SO_TIMESTAMP", unix.SO_TIMESTAMP}, {"SO_TIMESTAMPNS", unix.SO_TIMESTAMPNS}} {
		t.Run(opt.name, func(t *testing.T) {
			checkFds(t)
			a, b := pair(t)
			setOpt(t, b, opt.opt)
			if err := a.SendWithFds("many", files...); err != nil {
				t.Fatalf("SendWithFds() error = %v", err)
			}
			var s string
			got, err := b.RecvWithFds(&s)
			if err != nil || len(got) != maxFds {
				t.Fatalf("RecvWithFds() = %d files, %v; want %d", len(got), err, maxFds)
			}
			for _, f := range got {
				f.Close()
			}
		})
	}
}

// setOpt sets the socket option opt to 1 on c's socket.
func setOpt(t *testing.T, c *Conn, opt int) error {
	t.Helper()
	f, err := c.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rc, _ := f.SyscallConn()
	rc.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, 1) })
	return err
}

// TestPidfdClosed: with SO_PASSPIDFD (Linux 6.5 and later) each datagram
// brings an SCM_PIDFD descriptor, which Recv closes.
func TestPidfdClosed(t *testing.T) {
	checkFds(t)
	a, b := pair(t)
	const soPassPidfd = 0x4c // SO_PASSPIDFD
	if err := setOpt(t, b, soPassPidfd); err != nil {
		// Older kernels refuse the option: then this test checks only
		// that plain messages leak nothing.
		t.Logf("SO_PASSPIDFD not supported (%v): checking plain messages only", err)
	}
	for i := 0; i < 21; i++ {
		if err := a.Send(i); err != nil {
			t.Fatalf("Send() error = %v", err)
		}
		var n int
		if err := b.Recv(&n); err != nil || n != i {
			t.Fatalf("Recv() = %d, %v; want %d", n, err, i)
		}
	}
}

// panicky panics in UnmarshalJSON.
type panicky struct{}

func (*panicky) UnmarshalJSON([]byte) error { panic("panicky") }

// TestPanicClosesFiles: a panic in the target's UnmarshalJSON goes on, and
// the message's files are closed.
func TestPanicClosesFiles(t *testing.T) {
	checkFds(t)
	a, b := pair(t)
	files, _ := pipes(t, 3)
	if err := a.SendWithFds(json.RawMessage(`{}`), files...); err != nil {
		t.Fatalf("SendWithFds() error = %v", err)
	}
	for _, f := range files {
		f.Close()
	}
	func() {
		defer func() {
			if r := recover(); r != "panicky" {
				t.Errorf("recover() = %v, want the panic of UnmarshalJSON", r)
			}
		}()
		b.RecvWithFds(new(panicky))
	}()
}

// TestErrorsAfterClose: after Close, every call's error matches
// net.ErrClosed and reads "channel: ", the operation and the cause.
func TestErrorsAfterClose(t *testing.T) {
	a, _ := pair(t)
	if err := a.Close(); err != nil {
		t.Fatalf("Close() error = %v", err)
	}
	_, ferr := a.File()
	for name, err := range map[string]error{
		"Close":            a.Close(),
		"SetDeadline":      a.SetDeadline(time.Now()),
		"SetReadDeadline":  a.SetReadDeadline(time.Now()),
		"SetWriteDeadline": a.SetWriteDeadline(time.Now()),
		"File":             ferr,
		"Send":             a.Send(1),
		"Recv":             a.Recv(new(int)),
	} {
		if !errors.Is(err, net.ErrClosed) || !strings.HasPrefix(err.Error(), "channel: ") || strings.Contains(err.Error(), "@") {
			t.Errorf("%s() after Close: error = %v, want channel: ... matching net.ErrClosed, no address", name, err)
		}
	}
}
