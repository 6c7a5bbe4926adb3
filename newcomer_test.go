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

// TestChildThatNeverRan: a child that ends without running its function
// (its main skipped Dispatch, or its name was registered after Dispatch)
// gives the parent's Recv and Send an error that says so and names
// Dispatch and init, not a bare io.EOF; it still matches io.EOF, or
// syscall.EPIPE for Send. A child that ran its function and returned gives
// the bare io.EOF and EPIPE, even when it sent nothing; so does one killed
// before it could run it.
func TestChildThatNeverRan(t *testing.T) {
	// Registered in this process only: the child, whose init does not
	// register it, cannot find it, as when main registers after Dispatch.
	late := fmt.Sprint("registered-late-", time.Now().UnixNano()) // new under -count
	Register(late, func(*Conn) error { return nil })
	for _, tt := range []struct {
		name, child, env string
		status           int
		bare             bool
	}{
		{"no Dispatch", "echo", envNoDispatch + "=1", 0, false},
		{"registered late", late, "", exitNoStart, false},
		{"ran and returned", "exit-error", "", 1, true},
		{"killed at once", "echo", "", -1, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), testWait)
			defer cancel()
			cmd := CommandContext(ctx, tt.child)
			cmd.Stdout, cmd.Stderr = nil, nil
			if tt.env != "" {
				cmd.Env = append(cmd.Env, tt.env)
			}
			c, err := Start(cmd)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if tt.status == -1 {
				cmd.Process.Kill()
			}
			c.SetDeadline(bounded())
			named := func(err error) bool {
				return strings.Contains(fmt.Sprint(err), "channel.Dispatch") && strings.Contains(fmt.Sprint(err), "init function")
			}
			err = c.Recv(new(any))
			if tt.bare && err != io.EOF || !tt.bare && (err == io.EOF || !errors.Is(err, io.EOF) || !named(err)) {
				t.Errorf("Recv() = %v; want io.EOF, bare unless the child exited without running its function, then naming Dispatch and init", err)
			}
			err = c.Send("x")
			if !errors.Is(err, syscall.EPIPE) || named(err) == tt.bare {
				t.Errorf("Send() = %v; want EPIPE, naming Dispatch and init if the child exited without running its function", err)
			}
			var exit *exec.ExitError
			if err := cmd.Wait(); tt.status == 0 && err != nil || tt.status != 0 && (!errors.As(err, &exit) || exit.ExitCode() != tt.status) {
				t.Errorf("child: %v, want exit status %d (-1: killed)", err, tt.status)
			}
		})
	}
}
