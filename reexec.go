//go:build linux

// The re-exec helper: Go's substitute for fork, with a channel to the child.

package channel

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
)

// envFd names the child's inherited socket. Dispatch removes it before the
// child's function runs, so the child's own children do not believe it.
const envFd = "GO_CHANNEL_REEXEC_FD"

// children maps a name given to Register to its function.
var children sync.Map

// Register makes main the function that a child started by [Command](name)
// runs. Call it from an init function, so that the parent and the child,
// which run the same binary, both know the name. It panics if name is
// already registered, or if main is nil.
func Register(name string, main func(c *Conn) error) {
	if main == nil {
		panic("channel: Register called with a nil function for " + strconv.Quote(name))
	}
	if _, dup := children.LoadOrStore(name, main); dup {
		panic("channel: Register called twice for " + strconv.Quote(name))
	}
}

// Dispatch must be the first thing main (or TestMain) does. In a child
// started by [Start] (GO_CHANNEL_REEXEC_FD is set) it runs the function
// registered for the child's name with the child's end of the channel, and
// exits. In any other process Dispatch returns at once.
//
// The child's exit status says how it ended:
//   - 0: the function returned nil;
//   - 1: it returned an error, written to stderr;
//   - 2: it panicked, and the panic is on stderr, as with any Go program;
//   - 2: it could not start (no function registered under its name, a bad
//     GO_CHANNEL_REEXEC_FD, a socket FileConn refuses), the reason on
//     stderr.
func Dispatch() {
	v, ok := os.LookupEnv(envFd)
	if !ok {
		return
	}
	os.Unsetenv(envFd)
	name := os.Args[0]
	m, _ := children.Load(name)
	main, _ := m.(func(*Conn) error)
	fd, err := strconv.Atoi(v)
	var c *Conn
	switch {
	case main == nil:
		err = fmt.Errorf("no child function registered as %q", name)
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
		os.Exit(2)
	}
	err = main(c)
	c.Close()
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
// of the command, Env and ExtraFiles included, before passing it to
// [Start]. Its Stdout and Stderr are [os.Stdout] and [os.Stderr], so that
// what the child prints, and its error or panic, are seen; set them to
// something else (or nil, to discard) before Start.
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
	return cmd
}

// Start starts cmd, made by [Command] or [CommandContext], with the other
// end of a new channel as an extra file, and returns this end. It appends
// to cmd.ExtraFiles and cmd.Env (or a copy of this process's environment
// when Env is nil) and keeps everything else the caller set. It closes its
// copy of the child's end before returning, so that [Conn.Recv] returns
// [io.EOF] once the child exits.
//
// The returned Conn is the caller's to close, and cmd the caller's to wait
// for. Close it first, then call cmd.Wait: the child's Recv then returns
// io.EOF, which tells a child serving requests to return. Waiting first
// waits until the child ends on its own. EOF alone does not prove the
// child is dead, since it may have passed its socket on; Wait does.
//
// Start refuses to run in a process that was itself started by Start and
// whose main did not call [Dispatch] (GO_CHANNEL_REEXEC_FD is still set), so
// that a forgotten Dispatch cannot re-execute the program without end.
func Start(cmd *exec.Cmd) (*Conn, error) {
	if _, ok := os.LookupEnv(envFd); ok {
		// Started by Start, and main never called Dispatch: starting
		// another child would re-execute without end.
		return nil, fmt.Errorf("channel: %s is set: this process was started by Start, and main must call Dispatch first", envFd)
	}
	if _, ok := children.Load(cmd.Args[0]); !ok {
		return nil, fmt.Errorf("channel: no child function registered as %q", cmd.Args[0])
	}
	fds, err := socketpair()
	if err != nil {
		return nil, fmt.Errorf("channel: %w", err)
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
	return parent, nil
}
