//go:build linux

package channel

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// envListFds makes the test binary print its open descriptors and whether
// it sees the re-exec variable, then exit: the grandchild of TestGrandchild.
const envListFds = "CHANNEL_TEST_LIST_FDS"

func init() {
	if os.Getenv(envListFds) != "" {
		_, seen := os.LookupEnv(envFd)
		fmt.Printf("%s=%v\n", envFd, seen)
		for _, n := range fdNames(nil) {
			fmt.Println(n)
		}
		os.Exit(0)
	}

	Register("echo", func(c *Conn) error {
		for {
			var v any
			if err := c.Recv(&v); err == io.EOF {
				return nil
			} else if err != nil {
				return err
			}
			if err := c.Send(v); err != nil {
				return err
			}
		}
	})
	Register("fileconn-at-limit", fileConnAtLimit)
	Register("send-at-limit", sendAtLimit)
	Register("count-sigurg", countSIGURG)
	Register("args", func(c *Conn) error {
		return c.Send(os.Args)
	})
	Register("exit-error", func(c *Conn) error {
		return errors.New("the child's own error")
	})
	Register("panic", func(c *Conn) error {
		panic("the child's own panic")
	})
	Register("wait-eof", func(c *Conn) error {
		var v any
		if err := c.Recv(&v); err != io.EOF {
			return fmt.Errorf("Recv() error = %v, want io.EOF", err)
		}
		return nil
	})
	Register("files", childFiles)
	Register("conn", func(c *Conn) error {
		var v any
		fs, err := c.RecvWithFds(&v)
		if err != nil || len(fs) != 1 {
			return fmt.Errorf("RecvWithFds() = %d files, %v", len(fs), err)
		}
		second, err := FileConn(fs[0])
		fs[0].Close()
		if err != nil {
			return err
		}
		defer second.Close()
		var s string
		if err := second.Recv(&s); err != nil {
			return err
		}
		return second.Send(strings.ToUpper(s))
	})
	Register("big-sender", func(c *Conn) error {
		if err := c.Send("ready"); err != nil {
			return err
		}
		big := strings.Repeat("z", 8<<20)
		for {
			if err := c.Send(big); err != nil {
				return err
			}
		}
	})
	Register("grandchild", func(c *Conn) error {
		cmd := exec.Command("/proc/self/exe")
		cmd.Env = append(os.Environ(), envListFds+"=1")
		out, err := cmd.Output()
		if err != nil {
			return err
		}
		return c.Send(string(out))
	})
	Register("ctrunc", childCtrunc)
}

// childFiles uses, and answers with, the files its parent passes.
func childFiles(c *Conn) error {
	var req struct{ Text string }
	fs, err := c.RecvWithFds(&req)
	if err != nil || len(fs) != 3 {
		return fmt.Errorf("RecvWithFds() = %d files, %v", len(fs), err)
	}
	pipe, memfd, ln := fs[0], fs[1], fs[2]
	defer pipe.Close()
	defer memfd.Close()
	defer ln.Close()
	// The pipe: write the request's text into it.
	if _, err := pipe.WriteString(req.Text); err != nil {
		return err
	}
	pipe.Close()
	// The memfd: read what the parent wrote.
	b, err := io.ReadAll(memfd)
	if err != nil {
		return err
	}
	// The listening socket: accept a connection from the parent.
	l, err := net.FileListener(ln)
	if err != nil {
		return err
	}
	defer l.Close()
	if err := c.Send(string(b)); err != nil {
		return err
	}
	conn, err := l.Accept()
	if err != nil {
		return err
	}
	defer conn.Close()
	fmt.Fprint(conn, "accepted by the child")
	conn.Close()
	// And a pipe of the child's own, passed back.
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	fmt.Fprint(w, "written by the child")
	w.Close()
	return c.SendWithFds("pipe", r)
}

// childCtrunc lowers its descriptor limit so that only two of the five
// fds its parent sends fit, and reports what RecvWithFds made of it.
func childCtrunc(c *Conn) error {
	before := fdCount(nil)
	// The limit is on fd numbers: find one that leaves exactly two free.
	open := map[int]bool{}
	for _, n := range fdNames(nil) {
		fd, _ := strconv.Atoi(strings.SplitN(n, "=", 2)[0])
		open[fd] = true
	}
	limit, free := 0, 0
	for ; free < 2; limit++ {
		if !open[limit] {
			free++
		}
	}
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		return err
	}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: uint64(limit), Max: old.Max}); err != nil {
		return err
	}
	var v any
	fs, err := c.RecvWithFds(&v)
	for _, f := range fs {
		f.Close()
	}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		return err
	}
	after := fdCount(nil)
	return c.Send(map[string]any{"files": len(fs), "err": fmt.Sprint(err), "before": before, "after": after})
}

// start starts the named child with args, and waits for it when the test
// ends. It fails the test rather than hang: the child has two minutes, and
// each call on the Conn testWait, unless the test moves its deadline.
func start(t *testing.T, name string, args ...string) (*Conn, *exec.Cmd, *strings.Builder) {
	t.Helper()
	// A command tied to a context, built as Command's doc says.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	cmd := exec.CommandContext(ctx, "/proc/self/exe", args...)
	cmd.Args[0] = name
	stderr := new(strings.Builder)
	cmd.Stderr = stderr
	c, err := Start(cmd)
	if err != nil {
		cancel()
		t.Fatalf("Start(%s) error = %v", name, err)
	}
	c.SetDeadline(bounded())
	t.Cleanup(func() {
		c.Close()
		cmd.Wait()
		cancel()
	})
	return c, cmd, stderr
}

func TestChildValues(t *testing.T) {
	checkFds(t)
	c, cmd, _ := start(t, "echo")
	for _, v := range []any{"hello", 42.0, map[string]any{"a": []any{true, nil}}, strings.Repeat("q", 1<<20)} {
		if err := c.Send(v); err != nil {
			t.Fatalf("Send() error = %v", err)
		}
		var got any
		if err := c.Recv(&got); err != nil || fmt.Sprint(got) != fmt.Sprint(v) {
			t.Fatalf("Recv() = %.40v, %v; want %.40v", got, err, v)
		}
	}
	c.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child exit: %v, want success", err)
	}
}

func TestChildArgs(t *testing.T) {
	c, _, _ := start(t, "args", "one", "two")
	var args []string
	if err := c.Recv(&args); err != nil {
		t.Fatal(err)
	}
	if strings.Join(args, " ") != "args one two" {
		t.Errorf("child os.Args = %q, want [args one two]", args)
	}
}

// TestStartKeepsCallerFields: Start appends to ExtraFiles and Env and
// keeps the rest.
func TestStartKeepsCallerFields(t *testing.T) {
	checkFds(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	dir := t.TempDir()
	cmd := Command("grandchild") // any child: only the environment and fds matter
	cmd.Path = "/bin/sh"
	cmd.Args = []string{"grandchild", "-c", `echo "$MINE $PWD $GO_CHANNEL_REEXEC_FD" >&3; ls /proc/self/fd >&3; echo "pgid $(cut -d' ' -f5 /proc/$$/stat) pid $$" >&3`}
	cmd.Env = []string{"MINE=kept"}
	cmd.Dir = dir
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = time.Second
	c, err := Start(cmd)
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(r)
	lines := strings.Split(string(out), "\n")
	if want := "kept " + dir + " 4"; lines[0] != want {
		t.Errorf("child saw %q, want %q", lines[0], want)
	}
	if len(cmd.ExtraFiles) != 2 || cmd.ExtraFiles[0] != w {
		t.Errorf("cmd.ExtraFiles = %v, want the caller's file then the channel", cmd.ExtraFiles)
	}
	if !strings.Contains(string(out), "\n4\n") {
		t.Errorf("child fds:\n%s\nwant fd 4, the channel", out)
	}
	pid := strconv.Itoa(cmd.Process.Pid)
	if want := "pgid " + pid + " pid " + pid; !strings.Contains(string(out), want) {
		t.Errorf("child said %q, want %q: SysProcAttr.Setpgid kept", lines[len(lines)-2], want)
	}
	if cmd.WaitDelay != time.Second || cmd.SysProcAttr == nil || !cmd.SysProcAttr.Setpgid {
		t.Errorf("Start changed WaitDelay or SysProcAttr")
	}
}

func TestChildExitStatus(t *testing.T) {
	tests := []struct {
		name   string
		status int
		stderr string
	}{
		{"wait-eof", 0, ""},
		{"exit-error", 1, "exit-error: the child's own error"},
		{"panic", 2, "panic: the child's own panic"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, cmd, stderr := start(t, tt.name)
			c.Close()
			err := cmd.Wait()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tt.status || !strings.Contains(stderr.String(), tt.stderr) {
				t.Errorf("child %s: status %d, stderr %q; want %d, %q", tt.name, code, stderr, tt.status, tt.stderr)
			}
		})
	}
	t.Run("unknown name", func(t *testing.T) {
		if _, err := Start(Command("no-such-child")); err == nil || !strings.Contains(err.Error(), "no-such-child") {
			t.Fatalf("Start(unknown) error = %v, want one naming it", err)
		}
		// A child whose binary does not know the name fails at once.
		cmd := timed(t, testWait, "/proc/self/exe")
		cmd.Args[0] = "no-such-child"
		cmd.Env = append(os.Environ(), envFd+"=3")
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), `no child function registered as "no-such-child"`) {
			t.Fatalf("child with unknown name: %v, %q", err, out)
		}
	})
}

func TestRegisterTwicePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("Register(echo) again did not panic")
		}
	}()
	Register("echo", func(*Conn) error { return nil })
}

func TestRegisterNilPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("Register(nil-fn, nil) did not panic")
		}
	}()
	Register("nil-fn", nil)
}

// TestStartWithoutDispatch: a child whose main skips Dispatch, with
// GO_CHANNEL_REEXEC_FD still set, cannot start a second generation.
func TestStartWithoutDispatch(t *testing.T) {
	cmd := timed(t, testWait, "/proc/self/exe")
	cmd.Env = append(os.Environ(), envFd+"=3", envNoDispatch+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if got := string(out); !strings.Contains(got, "Start() error = ") || !strings.Contains(got, "Dispatch") {
		t.Fatalf("child's Start() said %q, want an error naming Dispatch", got)
	}
}

func TestChildFiles(t *testing.T) {
	checkFds(t)
	c, cmd, _ := start(t, "files")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	mfd, err := unix.MemfdCreate("test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	memfd := os.NewFile(uintptr(mfd), "memfd")
	defer memfd.Close()
	memfd.WriteString("written by the parent")
	memfd.Seek(0, io.SeekStart)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lf, err := l.(*net.TCPListener).File()
	l.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	addr := l.Addr().String()

	if err := c.SendWithFds(map[string]string{"Text": "through the pipe"}, w, memfd, lf); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if b, _ := io.ReadAll(r); string(b) != "through the pipe" {
		t.Errorf("pipe read %q, want what the child wrote", b)
	}
	var s string
	if err := c.Recv(&s); err != nil || s != "written by the parent" {
		t.Fatalf("Recv() = %q, %v; want the memfd's text", s, err)
	}
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial the child's listener: %v", err)
	}
	b, _ := io.ReadAll(conn)
	conn.Close()
	if string(b) != "accepted by the child" {
		t.Errorf("read %q from the child's listener", b)
	}
	fs, err := c.RecvWithFds(&s)
	if err != nil || len(fs) != 1 {
		t.Fatalf("RecvWithFds() = %d files, %v", len(fs), err)
	}
	b, _ = io.ReadAll(fs[0])
	fs[0].Close()
	if string(b) != "written by the child" {
		t.Errorf("child's pipe read %q", b)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child exit: %v", err)
	}
}

// TestChildSecondChannel passes one end of a new Pair to the child, which
// uses it as a second channel.
func TestChildSecondChannel(t *testing.T) {
	checkFds(t)
	c, cmd, _ := start(t, "conn")
	x, y, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	f, err := y.File()
	y.Close()
	if err != nil {
		t.Fatal(err)
	}
	err = c.SendWithFds(nil, f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	x.Send("second channel")
	var s string
	if err := x.Recv(&s); err != nil || s != "SECOND CHANNEL" {
		t.Fatalf("Recv() on the second channel = %q, %v", s, err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child exit: %v", err)
	}
	// The child is gone, and with it the only other end.
	if err := x.Recv(&s); err != io.EOF {
		t.Fatalf("Recv() after the child exited: %v, want io.EOF", err)
	}
}

// TestChildKilledMidFrame kills the child while the parent's queue holds
// part of a large message: the parent gets io.ErrUnexpectedEOF, no hang.
func TestChildKilledMidFrame(t *testing.T) {
	checkFds(t)
	c, cmd, _ := start(t, "big-sender")
	var s string
	if err := c.Recv(&s); err != nil || s != "ready" {
		t.Fatalf("Recv() = %q, %v", s, err)
	}
	// Wait until part of the 8 MiB message is queued for us.
	deadline := time.Now().Add(30 * time.Second)
	for queued := 0; queued == 0; {
		if time.Now().After(deadline) {
			t.Fatal("nothing of the large message queued after 30s")
		}
		queued, _ = unix.IoctlGetInt(c.s.fd, unix.SIOCINQ)
		time.Sleep(time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if err := c.Recv(&s); err != io.ErrUnexpectedEOF {
		t.Fatalf("Recv() after SIGKILL mid-message: %v, want io.ErrUnexpectedEOF", err)
	}
	if err := c.Recv(&s); err != io.EOF {
		t.Fatalf("Recv() after that: %v, want io.EOF", err)
	}
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("child exit: %v, want killed", err)
	}
}

// TestChildSeesParentClose: the parent closing its end is io.EOF in the
// child, which then exits 0.
func TestChildSeesParentClose(t *testing.T) {
	c, cmd, stderr := start(t, "wait-eof")
	c.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child exit: %v, stderr %q", err, stderr)
	}
}

// TestGrandchild: the child's own child inherits neither the socket nor
// the variable that names it.
func TestGrandchild(t *testing.T) {
	c, _, _ := start(t, "grandchild")
	var out string
	if err := c.Recv(&out); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Scan()
	if sc.Text() != envFd+"=false" {
		t.Errorf("grandchild: %s, want %s=false", sc.Text(), envFd)
	}
	for sc.Scan() {
		if strings.Contains(sc.Text(), "socket:") {
			t.Errorf("grandchild inherited %s; its fds:\n%s", sc.Text(), out)
		}
	}
}

// TestManyChildren runs 8 children at once, each on its own Conn.
func TestManyChildren(t *testing.T) {
	checkFds(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		c, cmd, _ := start(t, "echo")
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 100; j++ {
				want := fmt.Sprintf("child %d message %d", i, j)
				var got string
				if err := c.Send(want); err != nil {
					errs <- err
					return
				}
				if err := c.Recv(&got); err != nil || got != want {
					errs <- fmt.Errorf("Recv() = %q, %v; want %q", got, err, want)
					return
				}
			}
			c.Close()
			if err := cmd.Wait(); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestRlimitTruncatesControl: at its descriptor limit a process receives
// only the fds that fit; RecvWithFds says so, closes them and leaks none.
func TestRlimitTruncatesControl(t *testing.T) {
	checkFds(t)
	c, cmd, stderr := start(t, "ctrunc")
	ws, _ := pipes(t, 1)
	if err := c.SendWithFds("five", ws[0], ws[0], ws[0], ws[0], ws[0]); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Files         int
		Err           string
		Before, After int
	}
	if err := c.Recv(&got); err != nil {
		t.Fatalf("Recv() error = %v; child stderr %q", err, stderr)
	}
	if got.Files != 0 || !strings.Contains(got.Err, "control data truncated") || got.Before != got.After {
		t.Errorf("child at its fd limit: %+v; want no files, a truncation error, as many fds after as before", got)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child exit: %v", err)
	}
}

// TestCommandContext: cancelling the context kills the child, and the
// parent's Recv then returns io.EOF.
func TestCommandContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := CommandContext(ctx, "echo")
	c, err := Start(cmd)
	if err != nil {
		t.Fatalf("Start() error = %v", err)
	}
	defer c.Close()
	if err := c.Send("ping"); err != nil {
		t.Fatalf("Send() error = %v", err)
	}
	var v any
	if err := c.Recv(&v); err != nil || v != "ping" {
		t.Fatalf("Recv() = %v, %v; want ping", v, err)
	}
	cancel()
	c.SetReadDeadline(time.Now().Add(time.Minute))
	if err := c.Recv(&v); err != io.EOF {
		t.Fatalf("Recv() after cancel: error = %v, want io.EOF", err)
	}
	if err := cmd.Wait(); err == nil || ctx.Err() == nil {
		t.Fatalf("Wait() = %v, want the child killed", err)
	}
}
