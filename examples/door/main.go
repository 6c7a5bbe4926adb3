// Command door publishes a function at a filesystem path, for unrelated
// processes to call, as a Solaris door or rusty-doors' server does: here
// "double", a number in and twice it out.
//
//	door serve [-timeout 5s] [-max 1000] PATH  # until SIGINT or SIGTERM
//	door call PATH 111                        # prints 222
//	door call PATH 111 FILE                   # also has the server append 222 to FILE
//
// The server listens on an AF_UNIX SOCK_SEQPACKET socket at PATH and
// adopts each connection it accepts as a channel.Conn, answering any number
// of callers at once. It learns each caller's pid and uid from SO_PEERCRED
// (what door_ucred gives a door server) and answers callers of any other
// uid than its own with an error. A caller may pass an open file with its
// call; the server writes the answer into it too. The server refuses a PATH
// that another server answers on, replaces a stale socket file left by a
// server that died, and removes its socket file when it stops; then every
// caller still connected gets io.EOF.
//
// It faces every local user. A caller has -timeout (5 s) for each call,
// counted from its connection or its last answer: one that stalls, even in
// the middle of a message or holding files in one, is cut then, and the
// files of its unfinished message are closed. A Conn holds at most the
// bytes a caller sent of a message, not the length it announced. At most
// -max (1000) callers are served at once, each holding 3 descriptors and
// at most about 0.6 MB for a message not yet whole; beyond that the server
// waits to accept (callers queue in the kernel's backlog). When accept
// fails, for want of descriptors or otherwise, or adopting an accepted
// caller fails for want of descriptors, it backs off as net/http's Server
// does, 5 ms doubling to 1 s, keeping that caller, and logs the error once
// per back-off.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"channel"

	"golang.org/x/sys/unix"
)

// call is what a caller sends; a file may come with it.
type call struct {
	N int64 `json:"n"`
}

// answer is what the server sends back: the result, or why there is none.
type answer struct {
	N     int64  `json:"n"`
	Error string `json:"error,omitempty"`
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("door: ")
	args := os.Args[1:]
	switch {
	case len(args) >= 2 && args[0] == "serve":
		fs := flag.NewFlagSet("serve", flag.ExitOnError)
		timeout := fs.Duration("timeout", 5*time.Second, "time a caller has for each call")
		max := fs.Int("max", 1000, "callers served at once; more wait to be accepted")
		fs.Parse(args[1:])
		if fs.NArg() != 1 {
			log.Fatal("usage: door serve [-timeout 5s] [-max 1000] PATH")
		}
		if err := serve(fs.Arg(0), *timeout, *max); err != nil {
			log.Fatal(err)
		}
	case (len(args) == 3 || len(args) == 4) && args[0] == "call":
		n, err := strconv.ParseInt(args[2], 10, 64)
		if err != nil {
			log.Fatalf("not a number: %q", args[2])
		}
		var out *os.File
		if len(args) == 4 {
			if out, err = os.OpenFile(args[3], os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644); err != nil {
				log.Fatal(err)
			}
			defer out.Close()
		}
		r, err := dial(args[1], n, out)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(r)
	default:
		fmt.Fprintln(os.Stderr, "usage: door serve [-timeout 5s] [-max 1000] PATH | door call PATH NUMBER [FILE]")
		os.Exit(2)
	}
}

// serve answers calls at path until SIGINT or SIGTERM, at most max callers
// at once, each with timeout for each call.
func serve(path string, timeout time.Duration, max int) error {
	l, err := listen(path)
	if err != nil {
		return err
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)

	var mu sync.Mutex
	conns := map[*channel.Conn]bool{}
	slots := make(chan struct{}, max) // one per caller served
	stopped := make(chan struct{})
	go func() {
		<-stop
		close(stopped)
		l.Close() // removes path, and makes Accept below return
	}()
	log.Printf("serving double at %s, for uid %d, %d callers at once, %v a call", path, os.Geteuid(), max, timeout)
	// EMFILE and the like: wait, as net/http's Server does, and say so
	// once per back-off, not once per try.
	var delay time.Duration
	backOff := func(err error) {
		if delay == 0 {
			delay = 5 * time.Millisecond
			log.Printf("%v; retrying with back-off up to 1s", err)
		} else {
			delay = min(2*delay, time.Second)
		}
		time.Sleep(delay)
	}
	for {
		select {
		case slots <- struct{}{}:
		case <-stopped:
		}
		uc, err := l.AcceptUnix()
		if errors.Is(err, net.ErrClosed) {
			break
		}
		if err != nil {
			<-slots
			backOff(err)
			continue
		}
		// Adopting takes 4 descriptors more (3 kept): out of them, keep
		// the caller and back off.
		c, cred, err := adopt(uc)
		for errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
			backOff(err)
			c, cred, err = adopt(uc)
		}
		uc.Close()
		if delay != 0 && err == nil {
			log.Printf("accept works again")
			delay = 0
		}
		if err != nil {
			<-slots
			log.Print(err)
			continue
		}
		mu.Lock()
		conns[c] = true
		mu.Unlock()
		go func() {
			answerCalls(c, cred, timeout)
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
			c.Close() // and the files of an unfinished message
			<-slots
		}()
	}
	// Stopping: every caller still connected gets io.EOF. A call may be
	// stuck writing into its caller's file, so do not wait for calls.
	mu.Lock()
	for c := range conns {
		c.Close()
	}
	mu.Unlock()
	log.Print("stopped")
	return nil
}

// listen listens at path, unless another server answers there. A socket
// file that nobody answers on is a dead server's, and is replaced; any
// other file is left alone.
func listen(path string) (*net.UnixListener, error) {
	addr := &net.UnixAddr{Name: path, Net: "unixpacket"}
	l, err := net.ListenUnix("unixpacket", addr)
	if err == nil || !errors.Is(err, unix.EADDRINUSE) {
		return l, err
	}
	if fi, serr := os.Lstat(path); serr != nil || fi.Mode().Type() != os.ModeSocket {
		return nil, err
	}
	if c, derr := net.DialUnix("unixpacket", nil, addr); derr == nil {
		c.Close()
		return nil, fmt.Errorf("%s is in use: another server answers there", path)
	} else if !errors.Is(derr, unix.ECONNREFUSED) {
		return nil, err
	}
	if err := os.Remove(path); err != nil {
		return nil, err
	}
	return net.ListenUnix("unixpacket", addr)
}

// adopt makes an accepted connection a channel.Conn, and reads its
// caller's credentials. FileConn takes an *os.File: File duplicates the
// socket and FileConn duplicates it again; the caller closes uc, so that
// the Conn holds the only one.
func adopt(uc *net.UnixConn) (*channel.Conn, *unix.Ucred, error) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, nil, err
	}
	var cred *unix.Ucred
	if cerr := rc.Control(func(fd uintptr) {
		cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); cerr != nil {
		return nil, nil, cerr
	}
	if err != nil {
		return nil, nil, fmt.Errorf("SO_PEERCRED: %w", err)
	}
	f, err := uc.File()
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	c, err := channel.FileConn(f)
	return c, cred, err
}

// answerCalls answers c's calls until the caller goes, or takes longer
// than timeout for one.
func answerCalls(c *channel.Conn, cred *unix.Ucred, timeout time.Duration) {
	for {
		var in call
		c.SetDeadline(time.Now().Add(timeout)) // also bounds the answer, if the caller does not read
		files, err := c.RecvWithFds(&in)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			log.Printf("pid %d: no whole call within %v: cut", cred.Pid, timeout)
			return
		}
		if err != nil {
			if err != io.EOF {
				log.Printf("pid %d: %v", cred.Pid, err)
			}
			return
		}
		out := answer{N: 2 * in.N}
		switch {
		case int(cred.Uid) != os.Geteuid():
			out = answer{Error: fmt.Sprintf("uid %d may not call this door: it serves uid %d only", cred.Uid, os.Geteuid())}
		case len(files) > 1:
			out = answer{Error: fmt.Sprintf("%d files came with the call: at most one", len(files))}
		case len(files) == 1:
			if _, err := fmt.Fprintln(files[0], out.N); err != nil {
				out = answer{Error: "writing the answer into the file: " + err.Error()}
			}
		}
		for _, f := range files {
			f.Close()
		}
		if out.Error != "" {
			log.Printf("pid %d uid %d: double(%d): %s", cred.Pid, cred.Uid, in.N, out.Error)
		} else {
			log.Printf("pid %d uid %d: double(%d) = %d", cred.Pid, cred.Uid, in.N, out.N)
		}
		if err := c.Send(out); err != nil {
			log.Printf("pid %d: %v", cred.Pid, err) // the caller went
			return
		}
	}
}

// dial calls the door at path with n, and out if not nil.
func dial(path string, n int64, out *os.File) (int64, error) {
	uc, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return 0, err
	}
	f, err := uc.File()
	uc.Close()
	if err != nil {
		return 0, err
	}
	c, err := channel.FileConn(f)
	f.Close()
	if err != nil {
		return 0, err
	}
	defer c.Close()
	var files []*os.File
	if out != nil {
		files = append(files, out)
	}
	if err := c.SendWithFds(call{N: n}, files...); err != nil {
		return 0, err
	}
	var a answer
	if err := c.Recv(&a); err != nil {
		if err == io.EOF {
			return 0, fmt.Errorf("the server went before answering: %w", err)
		}
		return 0, err
	}
	if a.Error != "" {
		return 0, errors.New(a.Error)
	}
	return a.N, nil
}
