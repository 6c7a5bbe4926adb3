//go:build linux

package channel

// Tests of what a newcomer runs into: a Command started without Start, a
// child outliving its parent, a pool that sends all its jobs before reading.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

func init() {
	// pdeath-parent starts a spinning child, sends its pid, and waits.
	Register("pdeath-parent", func(c *Conn) error {
		cmd := Command("spin")
		child, err := Start(cmd)
		if err != nil {
			return err
		}
		defer child.Close()
		if err := c.Send(cmd.Process.Pid); err != nil {
			return err
		}
		return c.Recv(new(any))
	})
	Register("spin", func(*Conn) error {
		for {
		}
	})
}

// TestCommandStartedWithoutStart: a Command started by its own Run never
// runs main: it exits at once with status 3 and says to use channel.Start.
func TestCommandStartedWithoutStart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	cmd := CommandContext(ctx, "echo")
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = nil, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != exitNoStart {
		t.Fatalf("Run() = %v, want exit status %d; stderr %q", err, exitNoStart, stderr.String())
	}
	if !strings.Contains(stderr.String(), "channel.Start") {
		t.Errorf("stderr = %q, want it to name channel.Start", stderr.String())
	}
}

// TestRegisterEmptyPanics: a child needs a name.
func TestRegisterEmptyPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error(`Register("", f) did not panic`)
		}
	}()
	Register("", func(*Conn) error { return nil })
}

// TestChildDiesWithParent: a child busy in a loop, not reading its
// channel, is gone within a second of its parent's SIGKILL.
func TestChildDiesWithParent(t *testing.T) {
	c, cmd, stderr := start(t, "pdeath-parent")
	var pid int
	if err := c.Recv(&pid); err != nil {
		t.Fatalf("Recv() = %v; %s", err, stderr)
	}
	defer syscall.Kill(pid, syscall.SIGKILL) // if the test fails, before start's cmd.Wait
	cmd.Process.Kill()
	cmd.Process.Wait() // not cmd.Wait: a live child would hold its stderr pipe
	for deadline := time.Now().Add(time.Second); alive(pid); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("child %d still running 1s after its parent was killed", pid)
		}
	}
}

// alive reports whether process pid runs (a zombie does not).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	return !strings.HasPrefix(strings.TrimSpace(s[strings.LastIndexByte(s, ')')+1:]), "Z")
}

// TestCloseWriteWorkerPool: a parent that sends all its jobs before
// reading any answer, from a goroutine that then calls CloseWrite, gets
// every answer and then io.EOF, far past the few hundred messages the
// kernel queues; a Send after CloseWrite fails with net.ErrClosed.
func TestCloseWriteWorkerPool(t *testing.T) {
	c, _, stderr := start(t, "echo")
	const jobs = 2000
	sent := result(func() error {
		for i := range jobs {
			if err := c.Send(i); err != nil {
				return err
			}
		}
		return c.CloseWrite()
	})
	n := 0
	for {
		var v int
		err := c.Recv(&v)
		if err == io.EOF {
			break
		}
		if err != nil || v != n {
			t.Fatalf("Recv() #%d = %d, %v; child: %s", n, v, err, stderr)
		}
		n++
	}
	if n != jobs {
		t.Fatalf("%d answers before EOF, want %d", n, jobs)
	}
	if err := await(t, sent, "the sending goroutine"); err != nil {
		t.Fatal(err)
	}
	if err := c.Send("more"); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Send() after CloseWrite = %v, want net.ErrClosed", err)
	}
}
