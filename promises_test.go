//go:build linux

package channel

// Tests of promises that a plausible bug would break without another test
// noticing: each one was checked by breaking the library by hand.

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestSendPastDeadline: a Send whose write deadline has passed fails even
// when the peer's queue has room, as a net.Conn's Write does; and nothing
// reaches the peer.
func TestSendPastDeadline(t *testing.T) {
	for _, set := range []string{"SetWriteDeadline", "SetDeadline"} {
		t.Run(set, func(t *testing.T) {
			a, b := pair(t)
			past := time.Now().Add(-time.Second)
			if set == "SetDeadline" {
				a.SetDeadline(past)
			} else {
				a.SetWriteDeadline(past)
			}
			if err := a.Send("late"); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("Send() after %s(past) = %v, want os.ErrDeadlineExceeded", set, err)
			}
			if set == "SetDeadline" {
				if err := a.Recv(new(any)); !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("Recv() after SetDeadline(past) = %v, want os.ErrDeadlineExceeded", err)
				}
			}
			b.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			if err := b.Recv(new(any)); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("the peer's Recv() = %v, want nothing sent", err)
			}
		})
	}
}

// TestFilesWithLongValue: a value of several datagrams sent with files
// carries them on its first datagram only: the peer gets the value and
// exactly the files, and the channel goes on.
func TestFilesWithLongValue(t *testing.T) {
	checkFds(t)
	a, b := pair(t)
	r, w := pipe(t)
	v := jsonString(3*a.dgram + 100)
	sent := result(func() error { return a.SendWithFds(v, w, r) })
	b.SetReadDeadline(time.Now().Add(10 * time.Second))
	var got json.RawMessage
	files, err := b.RecvWithFds(&got)
	if err != nil {
		t.Fatalf("RecvWithFds() of a long value with 2 files = %v", err)
	}
	for _, f := range files {
		f.Close()
	}
	if len(files) != 2 || !bytes.Equal(got, v) {
		t.Fatalf("RecvWithFds() = %d bytes, %d files; want %d bytes, 2 files", len(got), len(files), len(v))
	}
	if err := await(t, sent, "SendWithFds"); err != nil {
		t.Fatal(err)
	}
	a.Send("next")
	var s string
	if err := b.Recv(&s); err != nil || s != "next" {
		t.Fatalf("Recv() after = %q, %v", s, err)
	}
}

// TestFilesOfBrokenMessagesClosed: the files of a message cut short by the
// peer's close, or of a malformed one, are closed when the error is
// returned, not only at Close.
func TestFilesOfBrokenMessagesClosed(t *testing.T) {
	cases := []struct {
		name string
		send func(peer int, fds []int)
	}{
		{"cut short", func(peer int, fds []int) {
			rawSend(t, peer, frame(100, `"abc`), fds...)
			unix.Close(peer)
		}},
		{"malformed", func(peer int, fds []int) {
			rawSend(t, peer, frame(2, `"abc"`), fds...)
		}},
		{"files on a continuation", func(peer int, fds []int) {
			rawSend(t, peer, frame(10, `"abc`))
			rawSend(t, peer, []byte(`def"`), fds...)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, peer := rawPair(t)
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			before := fdCount(t)
			tc.send(peer, []int{int(r.Fd()), int(w.Fd())})
			r.Close()
			w.Close()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.RecvWithFds(new(any)); err == nil {
				t.Fatal("RecvWithFds() = nil error")
			}
			// Before Close: the message's two files are gone, and our own
			// two pipe ends (and the peer, if the test closed it).
			want := before - 2
			if tc.name == "cut short" {
				want--
			}
			if got := fdCount(t); got != want {
				t.Errorf("after the error, before Close: %d descriptors, want %d: %v", got, want, fdNames(t))
			}
		})
	}
}

// TestRawMessageNotReused: a json.RawMessage handed to the caller is never
// written by later Recvs of long messages into other types.
func TestRawMessageNotReused(t *testing.T) {
	a, b := pair(t)
	for _, n := range []int{10, 2 * a.dgram} {
		v1, v2 := jsonString(n), json.RawMessage(`"`+strings.Repeat("y", n)+`"`)
		go func() { a.Send(v1); a.Send(v2); a.Send(v2) }()
		b.SetReadDeadline(time.Now().Add(10 * time.Second))
		var got json.RawMessage
		if err := b.Recv(&got); err != nil {
			t.Fatal(err)
		}
		keep := bytes.Clone(got)
		var s string
		if err := b.Recv(&s); err != nil {
			t.Fatal(err)
		}
		var other json.RawMessage
		if err := b.Recv(&other); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, keep) {
			t.Fatalf("a RawMessage of %d bytes returned by Recv was overwritten by later Recvs", n)
		}
	}
}

// TestCommandSetsOutputs: Command sends the child's stdout and stderr to
// ours, so that what it prints is seen.
func TestCommandSetsOutputs(t *testing.T) {
	cmd := Command("echo")
	if cmd.Stderr != os.Stderr || cmd.Stdout != os.Stdout {
		t.Fatalf("Command().Stdout, Stderr = %v, %v; want os.Stdout, os.Stderr", cmd.Stdout, cmd.Stderr)
	}
}

// TestStartFailureLeaksNothing: a Start whose cmd.Start fails closes both
// ends of the channel.
func TestStartFailureLeaksNothing(t *testing.T) {
	checkFds(t)
	before := fdCount(t)
	cmd := Command("echo")
	cmd.Path = "/nonexistent/channel-test"
	if _, err := Start(cmd); err == nil {
		t.Fatal("Start() of a missing binary = nil error")
	}
	if cmd.Process != nil {
		cmd.Wait()
	}
	if got := fdCount(t); got != before {
		t.Errorf("after a failed Start: %d descriptors, want %d: %v", got, before, fdNames(t))
	}
	var _ = exec.ErrNotFound
}

// TestMemoryFollowsBytes: a header that announces 64 MiB, with one byte
// of it, makes a Conn hold about a receive buffer, not 64 MiB.
func TestMemoryFollowsBytes(t *testing.T) {
	if held := heldForAnnounced(t); held > 4<<20 {
		t.Fatalf("a Conn holds %d MiB for a message of which 1 byte came, want about a receive buffer", held>>20)
	}
}

// heldForAnnounced returns the heap a Conn holds, in bytes, once it has
// received 1 byte of a message that announces 64 MiB.
func heldForAnnounced(tb testing.TB) int64 {
	c, peer := rawPair(tb)
	defer c.Close()
	runtime.GC()
	var before, during runtime.MemStats
	runtime.ReadMemStats(&before)
	rawSend(tb, peer, frame(64<<20, `"`))
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if err := c.Recv(new(any)); !errors.Is(err, os.ErrDeadlineExceeded) {
		tb.Fatalf("Recv() of 1 byte of 64 MiB = %v, want os.ErrDeadlineExceeded", err)
	}
	runtime.ReadMemStats(&during)
	return int64(during.HeapInuse) - int64(before.HeapInuse)
}

// TestSendToResetPeer: a peer that closed with our message unread makes the
// next Send fail with an error that matches EPIPE and says what the kernel
// said, ECONNRESET, as the README's Errors table promises.
func TestSendToResetPeer(t *testing.T) {
	a, b := pair(t)
	if err := a.Send("unread"); err != nil {
		t.Fatal(err)
	}
	b.Close()
	err := a.Send("next")
	if !errors.Is(err, syscall.EPIPE) || !errors.Is(err, syscall.ECONNRESET) || !strings.Contains(err.Error(), "reset") {
		t.Fatalf("Send() after the peer closed with our message unread = %v, want ECONNRESET matching EPIPE", err)
	}
}
