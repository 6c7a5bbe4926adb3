//go:build linux

package channel

// Tests of the two phases of a Recv's wait (fds.go): blocked in recvmsg,
// then in the runtime poller.

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// longFirstPhase makes c's first phase of a wait outlast the test (60 s
// of SO_RCVTIMEO instead of a few ms): only Close or a deadline can end
// it. It sends a request, so that c's next Recv awaits an answer, which
// is what blocks in recvmsg.
func longFirstPhase(t *testing.T, c *Conn) {
	tv := unix.Timeval{Sec: 60}
	if err := unix.SetsockoptTimeval(c.sock, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	if err := c.Send("request"); err != nil {
		t.Fatal(err)
	}
}

// TestFirstPhaseInterrupted: a Recv blocked in recvmsg leaves it for a
// Close, and for a deadline moved near.
func TestFirstPhaseInterrupted(t *testing.T) {
	t.Run("Close", func(t *testing.T) {
		a, _ := pair(t)
		longFirstPhase(t, a)
		done := result(func() error { return a.Recv(new(any)) })
		waitState(t, "[syscall", "(*Conn).Recv")
		if err := await(t, result(a.Close), "Close of a Conn whose Recv blocks in recvmsg"); err != nil {
			t.Fatalf("Close() = %v", err)
		}
		if err := await(t, done, "Recv blocked in recvmsg, after Close"); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Recv() = %v, want net.ErrClosed", err)
		}
	})
	t.Run("deadline moved", func(t *testing.T) {
		a, b := pair(t)
		longFirstPhase(t, a)
		done := result(func() error { return a.Recv(new(any)) })
		waitState(t, "[syscall", "(*Conn).Recv")
		a.SetReadDeadline(time.Now().Add(5 * time.Millisecond))
		if err := await(t, done, "Recv blocked in recvmsg, after SetReadDeadline"); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Recv() = %v, want os.ErrDeadlineExceeded", err)
		}
		// A deadline moved far does not end the wait; the message does.
		a.SetReadDeadline(time.Time{})
		done = result(func() error { var s string; return a.Recv(&s) })
		waitState(t, "[syscall", "(*Conn).Recv")
		a.SetReadDeadline(time.Now().Add(time.Hour))
		if err := b.Send("late"); err != nil {
			t.Fatal(err)
		}
		if err := await(t, done, "Recv"); err != nil {
			t.Fatalf("Recv() = %v, want the message", err)
		}
	})
}

// TestDeadlineLateness: a Recv with a deadline returns at it, whichever
// phase it waits in (a deadline 50 ms away lets a Recv awaiting an answer
// block in recvmsg first), and not more than a few milliseconds late. The bound checked is
// looser than the design's 1 ms, for a loaded test machine.
func TestDeadlineLateness(t *testing.T) {
	a, b := pair(t)
	for _, d := range []time.Duration{time.Millisecond, 10 * time.Millisecond, 50 * time.Millisecond} {
		var late []time.Duration
		for range 5 {
			// A request first: the Recv awaits its answer, which blocks
			// in recvmsg first when the deadline is far enough.
			if err := a.Send("request"); err != nil {
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
		if late[2] > 20*time.Millisecond {
			t.Errorf("deadline %v: Recv returned late by %v (sorted)", d, late)
		}
	}
}

// recvmsgThreads counts the threads of this process blocked in recvmsg.
func recvmsgThreads(t *testing.T) int {
	tasks, err := filepath.Glob("/proc/self/task/*/syscall")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		if strings.HasPrefix(string(b), fmt.Sprint(unix.SYS_RECVMSG)+" ") {
			n++
		}
	}
	return n
}

// TestBlockedRecvsHoldNoThreads: many Recvs waiting at once block in
// recvmsg only a few at a time, and once they wait in the poller, none
// holds a thread.
func TestBlockedRecvsHoldNoThreads(t *testing.T) {
	const n = 40
	var wg sync.WaitGroup
	errs := make(chan error, n)
	var conns []*Conn
	for range n {
		a, _ := pair(t)
		conns = append(conns, a)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.Send("request"); err != nil { // a Recv awaiting an answer blocks first
				errs <- err
				return
			}
			errs <- a.Recv(new(any))
		}()
	}
	most := 0
	for deadline := time.Now().Add(10 * time.Second); ; {
		most = max(most, recvmsgThreads(t))
		buf := make([]byte, 1<<20)
		waiting := strings.Count(string(buf[:runtime.Stack(buf, true)]), "[IO wait")
		if waiting >= n && recvmsgThreads(t) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: %d Recvs in the poller, %d threads in recvmsg", waiting, recvmsgThreads(t))
		}
		runtime.Gosched()
	}
	if most > maxBlocked {
		t.Errorf("%d threads in recvmsg at once, want at most %d", most, maxBlocked)
	}
	for _, c := range conns {
		c.Close()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Recv() = %v, want net.ErrClosed", err)
		}
	}
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

// TestNonblockingDescription: another holder switching the description to
// non-blocking only skips the first phase: messages, deadlines and Close
// work as before.
func TestNonblockingDescription(t *testing.T) {
	a, b := pair(t)
	f, err := a.File()
	if err != nil {
		t.Fatal(err)
	}
	rc, _ := f.SyscallConn()
	rc.Control(func(fd uintptr) { err = unix.SetNonblock(int(fd), true) })
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	done := result(func() error { var s string; return a.Recv(&s) })
	waitBlocked(t, "(*Conn).Recv")
	if err := b.Send("x"); err != nil {
		t.Fatal(err)
	}
	if err := await(t, done, "Recv"); err != nil {
		t.Fatalf("Recv() = %v", err)
	}
	a.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
	if err := a.Recv(new(any)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Recv() = %v, want os.ErrDeadlineExceeded", err)
	}
	a.SetReadDeadline(time.Time{})
	done = result(func() error { return a.Recv(new(any)) })
	waitBlocked(t, "(*Conn).Recv")
	a.Close()
	if err := await(t, done, "Recv at Close"); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Recv() = %v, want net.ErrClosed", err)
	}
}
