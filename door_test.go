//go:build linux

package channel

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The door example (examples/door), run as real processes: a server and
// clients that meet at a socket path.

func init() {
	// A caller that dies in the middle of a call: it connects to the door
	// at os.Args[1], sends the first datagram of a call of 100 bytes, and
	// exits without the rest.
	Register("door-dies-mid-call", func(*Conn) error {
		return doorDial(os.Args[1], frame(100, `{"n":`))
	})
	// A caller that dies before its answer: a whole call, then exit.
	Register("door-dies-before-answer", func(*Conn) error {
		return doorDial(os.Args[1], frame(7, `{"n":3}`))
	})
}

func doorDial(path string, d []byte) error {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		return err
	}
	_, err = unix.Write(fd, d)
	return err // exiting closes fd
}

// doorServer is a running `door serve`: its process and its log.
type doorServer struct {
	cmd   *exec.Cmd
	path  string
	mu    sync.Mutex
	log   []string
	lines chan string // every log line, also kept in log
}

// buildDoor builds examples/door into a directory that any user may read.
func buildDoor(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "door")
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("this test builds examples/door and needs go on the PATH: %v", err)
	}
	out, err := timed(t, 3*time.Minute, gobin, "build", "-o", bin, "./examples/door").CombinedOutput()
	if err != nil {
		t.Fatalf("go build ./examples/door: %v\n%s", err, out)
	}
	return bin
}

// startDoor starts `door serve flags path` with cred (nil: ours) and waits
// until it listens.
func startDoor(t *testing.T, bin, path string, cred *syscall.Credential, flags ...string) *doorServer {
	t.Helper()
	args := append(append([]string{"serve"}, flags...), path)
	s := &doorServer{cmd: exec.Command(bin, args...), path: path, lines: make(chan string, 100000)}
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	stderr, err := s.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.cmd.Process.Kill()
		s.cmd.Wait()
	})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			s.mu.Lock()
			s.log = append(s.log, sc.Text())
			s.mu.Unlock()
			s.lines <- sc.Text()
		}
		close(s.lines)
	}()
	s.waitLog(t, "serving double at")
	return s
}

// waitLog waits for a log line containing want.
func (s *doorServer) waitLog(t *testing.T, want string) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case line, ok := <-s.lines:
			if !ok {
				t.Fatalf("door server ended without logging %q; its log:\n%s", want, s.logText())
			}
			if strings.Contains(line, want) {
				return
			}
		case <-timeout:
			t.Fatalf("door server did not log %q in 20s; its log:\n%s", want, s.logText())
		}
	}
}

func (s *doorServer) logText() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.log, "\n")
}

// fds lists the server's open descriptors, by what they point at.
func (s *doorServer) fds(t *testing.T) []string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", s.cmd.Process.Pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var links []string
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil {
			links = append(links, l)
		}
	}
	return links
}

// awaitFds waits until the server holds n descriptors, or fails.
func (s *doorServer) awaitFds(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		fds := s.fds(t)
		if len(fds) == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("door server holds %d descriptors, want %d: %v", len(fds), n, fds)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// call runs `door call path n [file]` and returns its stdout and stderr.
func doorCall(t *testing.T, bin, path string, n int, file string) *exec.Cmd {
	args := []string{"call", path, strconv.Itoa(n)}
	if file != "" {
		args = append(args, file)
	}
	return timed(t, testWait, bin, args...)
}

func TestDoor(t *testing.T) {
	checkFds(t)
	bin := buildDoor(t)
	path := filepath.Join(t.TempDir(), "door.sock")
	s := startDoor(t, bin, path, nil)
	idle := len(s.fds(t))

	// 8 clients at once, each with a file for the server to write into.
	dir := t.TempDir()
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := 1000 + i
			file := filepath.Join(dir, fmt.Sprint(i))
			out, err := doorCall(t, bin, path, n, file).CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != strconv.Itoa(2*n) {
				t.Errorf("door call %d: %v, output %q, want %d", n, err, out, 2*n)
			}
			if b, err := os.ReadFile(file); err != nil || string(b) != fmt.Sprintf("%d\n", 2*n) {
				t.Errorf("file of call %d holds %q (%v), want %d", n, b, err, 2*n)
			}
		}()
	}
	wg.Wait()
	s.mu.Lock()
	logged := strings.Join(s.log, "\n")
	s.mu.Unlock()
	if want := fmt.Sprintf("uid %d: double(1000) = 2000", os.Geteuid()); !strings.Contains(logged, want) {
		t.Errorf("server log lacks %q (SO_PEERCRED):\n%s", want, logged)
	}

	// Callers that die in the middle of a call, and before their answer.
	for _, name := range []string{"door-dies-mid-call", "door-dies-before-answer"} {
		cmd := Command(name, path)
		c, err := Start(cmd)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Recv(new(any)); err != io.EOF {
			t.Errorf("%s: Recv() = %v, want io.EOF", name, err)
		}
		c.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	s.waitLog(t, "unexpected EOF")
	s.waitLog(t, "double(3) = 6")
	if out, err := doorCall(t, bin, path, 21, "").CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "42" {
		t.Errorf("door call after dying callers: %v, %q, want 42", err, out)
	}
	s.awaitFds(t, idle)

	// A second server refuses the path in use.
	out, err := timed(t, testWait, bin, "serve", path).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "in use") {
		t.Errorf("second door serve on the same path: %v, %q, want an error saying in use", err, out)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the refused second server removed the socket file: %v", err)
	}
}

// TestDoorStop stops the server while 8 callers wait for their answers:
// the server is stuck writing each answer into a full pipe passed with
// the call. Every caller gets io.EOF, and the socket file goes.
func TestDoorStop(t *testing.T) {
	bin := buildDoor(t)
	path := filepath.Join(t.TempDir(), "door.sock")
	s := startDoor(t, bin, path, nil)

	var calls []*exec.Cmd
	var outs []*strings.Builder
	var pipes []string
	for i := range 8 {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		var st unix.Stat_t
		rc, _ := w.SyscallConn()
		rc.Control(func(fd uintptr) {
			for { // fill the pipe: os.Pipe's are non-blocking
				if _, err := unix.Write(int(fd), make([]byte, 4096)); err != nil {
					break
				}
			}
			unix.Fstat(int(fd), &st)
		})
		pipes = append(pipes, fmt.Sprintf("pipe:[%d]", st.Ino))
		cmd := doorCall(t, bin, path, i, "/dev/fd/3")
		cmd.ExtraFiles = []*os.File{w}
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		w.Close()
		calls, outs = append(calls, cmd), append(outs, &out)
	}
	// Every call has reached the server: it holds every pipe.
	deadline := time.Now().Add(20 * time.Second)
	for {
		held := strings.Join(s.fds(t), " ")
		missing := 0
		for _, p := range pipes {
			if !strings.Contains(held, p) {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server holds %d of the 8 callers' pipes after 20s; log:\n%s", 8-missing, s.logText())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for i, cmd := range calls {
		done := result(cmd.Wait)
		err := await(t, done, fmt.Sprintf("door call %d after the server stopped", i))
		if err == nil || !strings.Contains(outs[i].String(), "the server went before answering: EOF") {
			t.Errorf("door call %d: %v, output %q, want io.EOF", i, err, outs[i].String())
		}
	}
	if err := await(t, result(s.cmd.Wait), "door server after SIGTERM"); err != nil {
		t.Errorf("door server: %v\n%s", err, s.logText())
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket file after the server stopped: %v, want it gone", err)
	}
}

// TestDoorRefusesOtherUid runs the server as another user (nobody), which
// takes root, and calls it as root: the caller gets the server's refusal.
func TestDoorRefusesOtherUid(t *testing.T) {
	if os.Geteuid() != 0 {
		// Without root no process of another uid can be made; TestDoor
		// checks that the server sees and logs the caller's uid.
		t.Skip("needs root to run the server as another user")
	}
	bin := buildDoor(t)
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(bin), filepath.Dir(filepath.Dir(bin)), dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "door.sock")
	const nobody = 65534
	s := startDoor(t, bin, path, &syscall.Credential{Uid: nobody, Gid: nobody})
	out, err := doorCall(t, bin, path, 4, "").CombinedOutput()
	want := fmt.Sprintf("uid 0 may not call this door: it serves uid %d only", nobody)
	if err == nil || !strings.Contains(string(out), want) {
		t.Errorf("door call as root to nobody's door: %v, %q, want %q", err, out, want)
	}
	s.waitLog(t, want)
}

// rawCaller connects to the door at path and sends d with fds, and
// returns the connection, closed when the test ends if not before.
func rawCaller(t *testing.T, path string, d []byte, fds ...int) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	unix.Fstat(fd, &st)
	t.Cleanup(func() {
		var now unix.Stat_t // unless the test closed it, and the number is another's
		if unix.Fstat(fd, &now) == nil && now.Ino == st.Ino {
			unix.Close(fd)
		}
	})
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	rawSend(t, fd, d, fds...)
	return fd
}

// procStat returns a process's resident memory in bytes and the CPU time
// it has used.
func procStat(t *testing.T, pid int) (rss int64, cpu time.Duration) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	pages, _ := strconv.ParseInt(f[21], 10, 64)
	return pages * int64(os.Getpagesize()), time.Duration(utime+stime) * 10 * time.Millisecond // USER_HZ is 100
}

// TestDoorMemoryByAnnouncement: waves of 80 callers that each announce a
// 64 MiB call, send 9 bytes of it and go leave the server's resident
// memory under 256 MiB.
func TestDoorMemoryByAnnouncement(t *testing.T) {
	bin := buildDoor(t)
	path := filepath.Join(t.TempDir(), "door.sock")
	s := startDoor(t, bin, path, nil, "-timeout", "20s")
	idle := len(s.fds(t))
	for range 3 {
		var fds []int
		for range 80 {
			fds = append(fds, rawCaller(t, path, frame(64<<20, `"`)))
		}
		s.awaitFds(t, idle+80*3)           // every caller adopted
		time.Sleep(100 * time.Millisecond) // the last Recvs take their first datagram
		if rss, _ := procStat(t, s.cmd.Process.Pid); rss > 256<<20 {
			t.Fatalf("server's resident memory with 80 callers announcing 64 MiB: %d MiB, want under 256", rss>>20)
		}
		closeFds(fds)
		s.awaitFds(t, idle)
	}
}

// TestDoorStalledFiles: at RLIMIT_NOFILE 1,024, 5 callers that each stall in
// a call holding 253 files pin every descriptor; the server backs off
// (under 30% of a CPU, the error logged once per back-off), cuts them at
// their deadline, and answers a legitimate caller within a second of it.
func TestDoorStalledFiles(t *testing.T) {
	bin := buildDoor(t)
	path := filepath.Join(t.TempDir(), "door.sock")
	const timeout = 2 * time.Second
	s := startDoor(t, bin, path, nil, "-timeout", timeout.String())
	pid := s.cmd.Process.Pid
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: 1024, Max: 1024}, nil); err != nil {
		t.Fatal(err)
	}
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	files := make([]int, 253)
	for i := range files {
		files[i] = int(null.Fd())
	}
	_, cpu0 := procStat(t, pid)
	start := time.Now()
	for range 5 {
		rawCaller(t, path, frame(100, `{"n":`), files...)
	}
	for deadline := time.Now().Add(10 * time.Second); len(s.fds(t)) < 1020; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the stalled callers' files did not fill the server's descriptors: %d", len(s.fds(t)))
		}
	}
	cmd := doorCall(t, bin, path, 21, "")
	var out []byte
	called := result(func() (err error) { out, err = cmd.Output(); return err })
	timer := time.AfterFunc(10*time.Second, func() { cmd.Process.Kill() })
	err = await(t, called, "door call")
	timer.Stop()
	took := time.Since(start)
	if err != nil || strings.TrimSpace(string(out)) != "42" {
		t.Fatalf("door call = %q, %v; server log:\n%s", out, err, s.logText())
	}
	if took > timeout+time.Second+500*time.Millisecond {
		t.Errorf("the legitimate call took %v, want within 1s of the stalled calls' %v deadline", took, timeout)
	}
	_, cpu1 := procStat(t, pid)
	if used := float64(cpu1-cpu0) / float64(took); used > 0.30 {
		t.Errorf("the server used %.0f%% of a CPU while callers pinned its descriptors, want under 30%%", 100*used)
	}
	if n := strings.Count(s.logText(), "accept:"); n > 3 {
		t.Errorf("the server logged %d accept errors, want one per back-off:\n%s", n, s.logText())
	}
}

// TestDoorCap: beyond -max callers the server waits to accept: a caller
// is answered once a served one leaves.
func TestDoorCap(t *testing.T) {
	bin := buildDoor(t)
	path := filepath.Join(t.TempDir(), "door.sock")
	s := startDoor(t, bin, path, nil, "-max", "2", "-timeout", "20s")
	idle := len(s.fds(t))
	a := rawCaller(t, path, frame(100, `{"n":`))
	rawCaller(t, path, frame(100, `{"n":`))
	s.awaitFds(t, idle+2*3)
	cmd := doorCall(t, bin, path, 5, "")
	var out []byte
	called := result(func() (err error) { out, err = cmd.Output(); return err })
	timer := time.AfterFunc(20*time.Second, func() { cmd.Process.Kill() })
	defer timer.Stop()
	select {
	case err := <-called:
		t.Fatalf("a third caller with -max 2 was answered at once: %q, %v", out, err)
	case <-time.After(300 * time.Millisecond): // waiting to be accepted, as it should
	}
	unix.Close(a)
	if err := await(t, called, "door call"); err != nil || strings.TrimSpace(string(out)) != "10" {
		t.Fatalf("door call = %q, %v; server log:\n%s", out, err, s.logText())
	}
}
