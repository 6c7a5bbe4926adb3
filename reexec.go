//go:build linux

// The re-exec helper: Go's substitute for fork, with a channel to the child.

package channel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// envFd names the child's inherited socket: empty as Command sets it, the
// fd once Start has. Dispatch removes it before the child's function runs,
// so the child's own children do not believe it.
const envFd = "GO_CHANNEL_REEXEC_FD"

// exitNoStart is the exit status of a child that could not run its function.
const exitNoStart = 3

// children maps a name given to Register to its function.
var children sync.Map

// Register makes main the function that a child started by [Command](name)
// runs. Call it from an init function, so that the parent and the child,
// which run the same binary, both know the name. It panics if name is
// empty or already registered, or if main is nil.
func Register(name string, main func(c *Conn) error) {
	if main == nil || name == "" {
		panic("channel: Register called with an empty name or a nil function for " + strconv.Quote(name))
	}
	if _, dup := children.LoadOrStore(name, main); dup {
		panic("channel: Register called twice for " + strconv.Quote(name))
	}
}

// Dispatch must be the first thing main (or TestMain) does. In a child
// started by [Start] (GO_CHANNEL_REEXEC_FD is set) it runs the function
// registered for the child's name with the child's end of the channel, and
// exits. In any other process Dispatch returns at once. Before it runs the
// function, Dispatch binds the child's end to an abstract address of the
// kernel's choosing (it is not listening: nobody can connect to it), by
// which the parent tells a child that ran its function from one that
// never did (see [Start]).
//
// The child's exit status says how it ended:
//   - 0: the function returned nil;
//   - 1: it returned an error, written to stderr;
//   - 2: it panicked, and the panic is on stderr, as with any Go program;
//   - 3: it could not run its function, the reason on stderr: the command
//     was started by its own Start, Run or Output method instead of by
//     [Start], no function is registered under its name (register it in
//     an init function, not in main), or its socket is unusable.
func Dispatch() {
	v, ok := os.LookupEnv(envFd)
	if !ok {
		return
	}
	os.Unsetenv(envFd)
	name := os.Args[0]
	main, _ := children.Load(name)
	fd, err := strconv.Atoi(v)
	var c *Conn
	switch {
	case v == "":
		err = fmt.Errorf("started by cmd.Start, Run or Output: a command from channel.Command must be started with channel.Start")
	case main == nil:
		err = fmt.Errorf("no child function registered as %q (Register it in an init function)", name)
	case err != nil || fd < 3:
		err = fmt.Errorf("bad %s=%q", envFd, v)
	default:
		// The inherited fd is not close-on-exec: FileConn duplicates it
		// with the flag set, and the original is closed.
		f := os.NewFile(uintptr(fd), "channel")
		c, err = FileConn(f)
		f.Close()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "channel: child %q: %v\n", name, err)
		os.Exit(exitNoStart)
	}
	c.s.bindAuto() // tells the parent that the function ran: see explain
	err = main.(func(*Conn) error)(c)
	c.Close() // and c stays open till then, even if main drops it
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// Command returns a command, not yet started, that runs this program again
// (/proc/self/exe, the running image even if its file was replaced) as the
// child registered under name, with args as its os.Args[1:]. Its
// os.Args[0] is name, as with moby's reexec. The caller may set any field
// of the command, ExtraFiles included, before passing it to [Start]; Env
// holds this process's environment and a mark that makes the child exit at
// once (status 3, see [Dispatch]) if the command is started by its own
// Start, Run or Output method instead of [Start]: append to Env rather than
// replace it. Its Stdout and Stderr are [os.Stdout] and [os.Stderr], so
// that what the child prints, and its error or panic, are seen; set them to
// something else (or nil, to discard) before Start.
//
// The child dies with its parent: SysProcAttr.Pdeathsig is SIGKILL. Linux
// sends it when the thread that started the child exits, not the process;
// Go ends a thread only when a goroutine locked to it with
// runtime.LockOSThread returns without unlocking, so a program that does so
// should start children from a goroutine that stays, or clear Pdeathsig.
// EOF on the channel, which the child sees when the parent's end closes,
// is the other signal of the parent's death.
//
// Start takes any command whose Args[0] is a registered name; to tie the
// child to a context, use [CommandContext].
func Command(name string, args ...string) *exec.Cmd {
	return reexec(exec.Command("/proc/self/exe", args...), name)
}

// CommandContext is like [Command] but ties the child to ctx, as
// [exec.CommandContext] does: when ctx is done before the child exits, the
// child is killed (cmd.Cancel), and the parent's [Conn.Recv] then returns
// [io.EOF].
func CommandContext(ctx context.Context, name string, args ...string) *exec.Cmd {
	return reexec(exec.CommandContext(ctx, "/proc/self/exe", args...), name)
}

func reexec(cmd *exec.Cmd, name string) *exec.Cmd {
	cmd.Args[0] = name
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), envFd+"=")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// Start starts cmd, made by [Command] or [CommandContext], with the other
// end of a new channel as an extra file, and returns this end. It appends
// to cmd.ExtraFiles and cmd.Env (or a copy of this process's environment
// when Env is nil) and keeps everything else the caller set. It closes its
// copy of the child's end before returning, so that [Conn.Recv] returns
// [io.EOF] once the child exits.
//
// If the child exits without having run its function (its main did not
// call Dispatch first, or registered the name after Dispatch instead of in
// an init function), the Conn's Recv and Send say so instead: their error
// names Dispatch and init, and still matches io.EOF or [syscall.EPIPE].
// A child killed before it ran its function gives the bare io.EOF.
//
// The returned Conn is the caller's to close, and cmd the caller's to wait
// for. Close it first, then call cmd.Wait: the child's Recv then returns
// io.EOF, which tells a child serving requests to return. Waiting first
// waits until the child ends on its own. EOF alone does not prove the
// child is dead, since it may have passed its socket on; Wait does.
//
// Start refuses to run in a process that was itself started by Start (or by
// a Command's own Start) and whose main did not call [Dispatch]
// (GO_CHANNEL_REEXEC_FD is still set), so that a forgotten Dispatch cannot
// re-execute the program without end.
func Start(cmd *exec.Cmd) (*Conn, error) {
	if _, ok := os.LookupEnv(envFd); ok {
		// Started by Start, and main never called Dispatch: starting
		// another child would re-execute without end.
		return nil, fmt.Errorf("channel: %s is set: this process was started as a child, and main (or TestMain) must call channel.Dispatch first", envFd)
	}
	if _, ok := children.Load(cmd.Args[0]); !ok {
		return nil, fmt.Errorf("channel: no child function registered as %q", cmd.Args[0])
	}
	fds, err := socketpair()
	if err != nil {
		return nil, err
	}
	// The child's end is closed here whatever happens, so that the parent
	// sees EOF when the child goes.
	f := os.NewFile(uintptr(fds[1]), "channel")
	defer f.Close()
	parent, err := newConn(fds[0])
	if err != nil {
		return nil, err
	}
	extra, env := cmd.ExtraFiles, cmd.Env
	cmd.ExtraFiles = append(cmd.ExtraFiles[:len(extra):len(extra)], f)
	cmd.Env = append(cmd.Environ(), envFd+"="+strconv.Itoa(2+len(cmd.ExtraFiles)))
	if err := cmd.Start(); err != nil {
		cmd.ExtraFiles, cmd.Env = extra, env
		parent.Close()
		return nil, fmt.Errorf("channel: %w", err)
	}
	parent.child = cmd.Process.Pid
	return parent, nil
}

// explain returns err, or, if c was made by Start and its child exited
// without having run its function, an error that says so and names the
// likely causes. Dispatch binds the child's socket before it runs the
// function, and the parent sees that address even once the child is gone.
// A child killed by a signal gets the bare error.
func (c *Conn) explain(err error) error {
	if err == nil || c.child == 0 || err != io.EOF && !errors.Is(err, syscall.EPIPE) || c.s.peerBound() || !exited(c.child) {
		return err
	}
	return fmt.Errorf("channel: the child ended without running its function (is channel.Dispatch the first call in its main or TestMain, and its name registered in an init function?): %w", err)
}

// exited waits up to 100 ms for the child pid, which closed its end of the
// channel, to end, and says whether it exited rather than was killed. It
// does not reap the child: cmd.Wait still does, and once it has, exited
// says false.
func exited(pid int) bool {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 100) // readable once it has ended
	var info unix.Siginfo
	unix.Waitid(unix.P_PIDFD, fd, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
	return info.Code == 1 // CLD_EXITED
}
