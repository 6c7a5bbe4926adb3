//go:build linux

package channel

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// envNoDispatch makes the test binary act as a program whose main forgot
// Dispatch: it tries to Start a child and prints what Start said.
const envNoDispatch = "CHANNEL_TEST_NO_DISPATCH"

func TestMain(m *testing.M) {
	if os.Getenv(envNoDispatch) != "" {
		_, err := Start(Command("echo"))
		fmt.Printf("Start() error = %v\n", err)
		os.Exit(0)
	}
	// Children built with -race sleep 1 s at exit unless told not to.
	if _, ok := os.LookupEnv("GORACE"); !ok {
		os.Setenv("GORACE", "atexit_sleep_ms=0")
	}
	Dispatch()
	os.Exit(m.Run())
}

// pair returns both ends of a new channel, closed when the test ends.
func pair(t testing.TB) (*Conn, *Conn) {
	t.Helper()
	a, b, err := Pair()
	if err != nil {
		t.Fatalf("Pair() error = %v", err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	a.SetDeadline(bounded())
	b.SetDeadline(bounded())
	return a, b
}

// testWait bounds every wait of a test, so that a broken library fails the
// suite in seconds instead of hanging it: pair, rawPair and start give their
// Conns deadlines this far, and tests that move a deadline put it back.
const testWait = 20 * time.Second

// timed returns a command killed if it runs longer than d.
func timed(t testing.TB, d time.Duration, name string, args ...string) *exec.Cmd {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return exec.CommandContext(ctx, name, args...)
}

// bounded returns a deadline testWait from now.
func bounded() time.Time { return time.Now().Add(testWait) }

// rawPair returns a Conn and the raw, blocking fd of its peer, for tests
// whose other end does not use the package.
func rawPair(t testing.TB) (*Conn, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[0]), "conn")
	c, err := FileConn(f)
	f.Close()
	if err != nil {
		t.Fatalf("FileConn() error = %v", err)
	}
	c.SetDeadline(bounded())
	peer := fds[1]
	var st unix.Stat_t
	unix.Fstat(peer, &st)
	t.Cleanup(func() {
		c.Close()
		// Close the peer unless the test did: then its number may be
		// another file's by now.
		var now unix.Stat_t
		if unix.Fstat(peer, &now) == nil && now.Ino == st.Ino && now.Dev == st.Dev {
			unix.Close(peer)
		}
	})
	return c, peer
}

// rawSend sends one datagram on a raw fd, with fds attached.
func rawSend(t testing.TB, fd int, data []byte, fds ...int) {
	t.Helper()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if err := unix.Sendmsg(fd, data, oob, nil, unix.MSG_NOSIGNAL); err != nil {
		t.Fatalf("sendmsg(%d bytes, %d fds) error = %v", len(data), len(fds), err)
	}
}

// frame returns header and JSON as one datagram.
func frame(length int, json string) []byte {
	b := make([]byte, headerLen, headerLen+len(json))
	binary.LittleEndian.PutUint64(b, uint64(length))
	return append(b, json...)
}

// jsonString returns a JSON string value exactly n bytes long (n >= 2).
func jsonString(n int) json.RawMessage {
	b := bytes.Repeat([]byte{'x'}, n)
	b[0], b[n-1] = '"', '"'
	return b
}

// fdCount counts this process's open descriptors, but for pidfds: since Go
// 1.23 each *os.Process holds one until Wait, or until the collector
// finalises it, which a test does not own.
func fdCount(testing.TB) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		panic(err)
	}
	n := 0
	for _, e := range ents {
		if target, _ := os.Readlink("/proc/self/fd/" + e.Name()); target != "anon_inode:[pidfd]" {
			n++
		}
	}
	return n
}

// pipe returns a pipe, closed when the test ends.
func pipe(t testing.TB) (r, w *os.File) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return r, w
}

// fdNames lists what this process's descriptors are, for a failure message.
func fdNames(t testing.TB) []string {
	ents, _ := os.ReadDir("/proc/self/fd")
	var names []string
	for _, e := range ents {
		target, _ := os.Readlink("/proc/self/fd/" + e.Name())
		names = append(names, e.Name()+"="+target)
	}
	return names
}

// checkFds fails the test if the descriptor count at its end differs from
// the count now. Tests that use it do not run in parallel.
func checkFds(t *testing.T) {
	t.Helper()
	// The runtime opens its poller's descriptors on first use: not a leak.
	if r, w, err := os.Pipe(); err == nil {
		r.Close()
		w.Close()
	}
	before, names := fdCount(t), fdNames(t)
	t.Cleanup(func() {
		if after := fdCount(t); after != before {
			t.Errorf("open descriptors: %d before, %d after:\n%v\n%v", before, after, names, fdNames(t))
		}
	})
}

// waitBlocked waits until a goroutine is parked by the poller inside fn, so
// that a test acts on a call that is really blocked.
func waitBlocked(t testing.TB, fn string) {
	t.Helper()
	waitState(t, "[IO wait", fn)
}

// waitState waits until a goroutine in state (as runtime.Stack shows it,
// "[IO wait" or "[syscall") is inside fn.
func waitState(t testing.TB, state, fn string) {
	t.Helper()
	buf := make([]byte, 1<<20)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		n := runtime.Stack(buf, true)
		for _, g := range strings.Split(string(buf[:n]), "\n\n") {
			if strings.Contains(g, state) && strings.Contains(g, fn) {
				return
			}
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("no goroutine %s] in %s after 10s", state, fn)
}

// result runs f in a goroutine and returns its error on a channel.
func result(f func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	return ch
}

// await returns the error from ch, failing the test if none comes in time.
func await(t testing.TB, ch <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("%s still blocked after 10s", what)
		return nil
	}
}

type shape struct {
	A int               `json:"a"`
	B string            `json:"b"`
	C []int             `json:"c"`
	D map[string]bool   `json:"d"`
	E *shape            `json:"e,omitempty"`
	F []json.RawMessage `json:"f"`
}

func TestRoundTripShapes(t *testing.T) {
	a, b := pair(t)
	tests := []struct {
		name string
		v    any
	}{
		{"null", nil},
		{"true", true},
		{"zero", 0},
		{"float", 3.25},
		{"empty string", ""},
		{"unicode", "héllo, 世界 \u2028 <&>"},
		{"empty slice", []int{}},
		{"empty map", map[string]int{}},
		{"ints", []int{5, 4, 3, 2, 1}},
		{"map", map[string]any{"x": 1.5, "y": []any{"z", nil, false}}},
		{"struct", shape{A: 1776, B: "hello world!", C: []int{1}, D: map[string]bool{"k": true}, E: &shape{A: -1}, F: []json.RawMessage{json.RawMessage(`{"n":null}`)}}},
		{"1 byte", json.RawMessage("7")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := a.Send(tt.v); err != nil {
				t.Fatalf("Send() error = %v", err)
			}
			// Compare as decoded by encoding/json, whose output we sent.
			var want, got any
			b0, _ := json.Marshal(tt.v)
			json.Unmarshal(b0, &want)
			if err := b.Recv(&got); err != nil {
				t.Fatalf("Recv() error = %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Recv() = %#v, want %#v", got, want)
			}
		})
	}
}

func TestRoundTripStruct(t *testing.T) {
	a, b := pair(t)
	want := shape{A: 1776, B: "hello world!", C: []int{5, 4, 3, 2, 1}, D: map[string]bool{}, F: []json.RawMessage{}}
	if err := a.Send(want); err != nil {
		t.Fatalf("Send() error = %v", err)
	}
	var got shape
	if err := b.Recv(&got); err != nil {
		t.Fatalf("Recv() error = %v", err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Recv() = %+v, want %+v", got, want)
	}
}

// TestSizes sends values around the datagram size and up to the limit, and
// checks each arrives whole, in as many datagrams as its size needs.
func TestSizes(t *testing.T) {
	a, b := pair(t)
	one := a.dgram - headerLen // JSON bytes that fit the first datagram
	tests := []struct {
		name string
		n    int
	}{
		{"2 bytes", 2},
		{"exactly one datagram", one},
		{"one byte more", one + 1},
		{"two datagrams and one byte", one + a.dgram + 1},
		{"4 MiB", 4 << 20},
		{"maximum", maxLen},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := jsonString(tt.n)
			done := result(func() error { return a.Send(v) })
			var got json.RawMessage
			if err := b.Recv(&got); err != nil {
				t.Fatalf("Recv() error = %v", err)
			}
			if err := await(t, done, "Send"); err != nil {
				t.Fatalf("Send() error = %v", err)
			}
			if !bytes.Equal(got, v) {
				t.Errorf("Recv() = %d bytes, want %d identical bytes", len(got), len(v))
			}
		})
	}
	t.Run("one over the maximum", func(t *testing.T) {
		err := a.Send(jsonString(maxLen + 1))
		if err == nil || !strings.Contains(err.Error(), "over the limit") {
			t.Fatalf("Send(maxLen+1) error = %v, want over the limit", err)
		}
		// Nothing was written: the next message is the next one sent.
		if err := a.Send("next"); err != nil {
			t.Fatalf("Send() error = %v", err)
		}
		var got string
		if err := b.Recv(&got); err != nil || got != "next" {
			t.Fatalf("Recv() = %q, %v; want \"next\", nil", got, err)
		}
	})
}

// TestDatagramCount checks on the wire that a value that fits one datagram
// is one datagram, and that a larger one is split at the datagram size.
func TestDatagramCount(t *testing.T) {
	c, peer := rawPair(t)
	one := c.dgram - headerLen
	for _, n := range []int{2, one, one + 1} {
		done := result(func() error { return c.Send(jsonString(n)) })
		var sizes []int
		for got := -headerLen; got < n; {
			buf := make([]byte, 1<<20)
			k, _, flags, _, err := unix.Recvmsg(peer, buf, nil, 0)
			if err != nil || flags&unix.MSG_TRUNC != 0 {
				t.Fatalf("recvmsg() = %d, flags %#x, %v", k, flags, err)
			}
			sizes = append(sizes, k)
			got += k
		}
		if err := await(t, done, "Send"); err != nil {
			t.Fatalf("Send() error = %v", err)
		}
		want := []int{n + headerLen}
		if n > one {
			want = []int{c.dgram, n + headerLen - c.dgram}
		}
		if !reflect.DeepEqual(sizes, want) {
			t.Errorf("Send(%d bytes) datagrams = %v, want %v", n, sizes, want)
		}
	}
}

// TestSmallSendBuffer lowers SO_SNDBUF under a Conn: EMSGSIZE makes Send
// use smaller datagrams instead of failing.
func TestSmallSendBuffer(t *testing.T) {
	a, b := pair(t)
	if err := unix.SetsockoptInt(a.s.fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 16384); err != nil {
		t.Fatal(err)
	}
	v := jsonString(100000)
	done := result(func() error { return a.Send(v) })
	var got json.RawMessage
	if err := b.Recv(&got); err != nil {
		t.Fatalf("Recv() error = %v", err)
	}
	if err := await(t, done, "Send"); err != nil {
		t.Fatalf("Send() error = %v", err)
	}
	if !bytes.Equal(got, v) {
		t.Errorf("Recv() = %d bytes, want the %d sent", len(got), len(v))
	}
	if a.dgram >= 32768 {
		t.Errorf("datagram size after EMSGSIZE = %d, want < 32768", a.dgram)
	}
}

func TestRecvNonPointer(t *testing.T) {
	a, b := pair(t)
	var s string
	for _, v := range []any{nil, s, (*string)(nil)} {
		if err := b.Recv(v); err == nil {
			t.Errorf("Recv(%T) error = nil, want one", v)
		}
	}
	// Nothing was consumed by the refused calls.
	if err := a.Send("x"); err != nil {
		t.Fatal(err)
	}
	if err := b.Recv(&s); err != nil || s != "x" {
		t.Errorf("Recv() = %q, %v; want \"x\", nil", s, err)
	}
}

func TestBadJSONKeepsConn(t *testing.T) {
	checkFds(t)
	c, peer := rawPair(t)
	rawSend(t, peer, frame(5, `{"a":`))
	rawSend(t, peer, frame(2, `"x"`[:2]))
	rawSend(t, peer, frame(3, `"x"`))
	var v map[string]int
	for i := 0; i < 2; i++ {
		var se *json.SyntaxError
		if err := c.Recv(&v); !errors.As(err, &se) {
			t.Fatalf("Recv() error = %v, want a *json.SyntaxError", err)
		}
	}
	var n int
	var te *json.UnmarshalTypeError
	if err := c.Recv(&n); !errors.As(err, &te) {
		t.Fatalf("Recv(&int) of a string: error = %v, want a *json.UnmarshalTypeError", err)
	}
	rawSend(t, peer, frame(3, `"y"`))
	var s string
	if err := c.Recv(&s); err != nil || s != "y" {
		t.Fatalf("Recv() after bad JSON = %q, %v; want \"y\", nil", s, err)
	}
}

// TestMalformedFrames sends broken frames from a raw peer: each breaks the
// receive side for good, with the same error every time, and leaks nothing.
func TestMalformedFrames(t *testing.T) {
	big := make([]byte, 300000)
	tests := []struct {
		name  string
		dgram [][]byte
		want  string
	}{
		{"empty datagram", [][]byte{{}}, "shorter than"},
		{"7 bytes", [][]byte{make([]byte, 7)}, "shorter than"},
		{"length over the maximum", [][]byte{frame(maxLen+1, "")}, "over the limit"},
		{"length 2^64-1", [][]byte{binary.LittleEndian.AppendUint64(nil, 1<<64-1)}, "over the limit"},
		{"more bytes than the length", [][]byte{frame(2, `"xy"`)}, "carries 4 bytes"},
		{"continuation too long", [][]byte{frame(4, `"x`), []byte(`y"z`)}, "longer than"},
		{"empty continuation", [][]byte{frame(4, `"x`), {}}, "empty datagram"},
		{"first datagram too long", [][]byte{append(frame(len(big), ""), big...)}, "longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkFds(t)
			c, peer := rawPair(t)
			if tt.name == "first datagram too long" {
				unix.SetsockoptInt(peer, unix.SOL_SOCKET, unix.SO_SNDBUF, 1<<20)
			}
			for _, d := range tt.dgram {
				rawSend(t, peer, d)
			}
			rawSend(t, peer, frame(2, `""`)) // a good message after: never delivered
			var v any
			err := c.Recv(&v)
			if !errors.Is(err, errFrame) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Recv() error = %v, want a malformed frame error containing %q", err, tt.want)
			}
			if err2 := c.Recv(&v); err2 != err {
				t.Errorf("second Recv() error = %v, want the same %v", err2, err)
			}
		})
	}
}

func TestFdsOnContinuation(t *testing.T) {
	checkFds(t)
	c, peer := rawPair(t)
	r, _ := pipe(t)
	rawSend(t, peer, frame(4, `"x`))
	rawSend(t, peer, []byte(`y"`), int(r.Fd()))
	var v any
	if _, err := c.RecvWithFds(&v); !errors.Is(err, errFrame) || !strings.Contains(err.Error(), "continuation") {
		t.Fatalf("RecvWithFds() error = %v, want fds on a continuation refused", err)
	}
}

// sendFiles makes n pipes and returns their write ends, closed at the end
// of the test, and a function that reads back from read end i.
func pipes(t *testing.T, n int) ([]*os.File, func(i int) string) {
	t.Helper()
	var rs, ws []*os.File
	for i := 0; i < n; i++ {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		rs, ws = append(rs, r), append(ws, w)
		t.Cleanup(func() { r.Close(); w.Close() })
	}
	read := func(i int) string {
		buf := make([]byte, 64)
		n, err := rs[i].Read(buf)
		if err != nil {
			t.Fatalf("read from pipe %d: %v", i, err)
		}
		return string(buf[:n])
	}
	return ws, read
}

func TestFds(t *testing.T) {
	for _, n := range []int{0, 1, 2, 3, maxFds} {
		t.Run(fmt.Sprint(n, " fds"), func(t *testing.T) {
			checkFds(t)
			a, b := pair(t)
			ws, read := pipes(t, min(n, 3))
			files := make([]*os.File, n)
			for i := range files {
				files[i] = ws[i%len(ws)]
			}
			if err := a.SendWithFds(n, files...); err != nil {
				t.Fatalf("SendWithFds(%d files) error = %v", n, err)
			}
			var got int
			fs, err := b.RecvWithFds(&got)
			if err != nil || got != n || len(fs) != n {
				t.Fatalf("RecvWithFds() = %d, %d files, %v; want %d, %d files, nil", got, len(fs), err, n, n)
			}
			// Each file is a duplicate of the one sent in its place.
			for i, f := range fs {
				if i < len(ws) {
					fmt.Fprintf(f, "via %d", i)
				}
				f.Close()
			}
			for i := range ws {
				if s := read(i); s != fmt.Sprint("via ", i) {
					t.Errorf("pipe %d read %q, want %q", i, s, fmt.Sprint("via ", i))
				}
			}
		})
	}
	t.Run("254 fds refused", func(t *testing.T) {
		a, b := pair(t)
		ws, _ := pipes(t, 1)
		files := make([]*os.File, maxFds+1)
		for i := range files {
			files[i] = ws[0]
		}
		// Refused by the package itself, before anything is written, not
		// by the kernel.
		if err := a.SendWithFds("x", files...); err == nil || errors.Is(err, syscall.EINVAL) || !strings.Contains(err.Error(), "253") {
			t.Fatalf("SendWithFds(254 files) = %v, want the package's own error naming 253", err)
		}
		if err := a.SendWithFds("x", nil); err == nil {
			t.Fatal("SendWithFds(nil file) error = nil, want one")
		}
		// Nothing was written by the refused calls.
		a.Send("y")
		var s string
		if err := b.Recv(&s); err != nil || s != "y" {
			t.Errorf("Recv() = %q, %v; want \"y\", nil", s, err)
		}
	})
}

// TestSentFileStaysNonblocking checks that SendWithFds does not call Fd():
// the sent pipe stays non-blocking, so a deadline on it still works.
func TestSentFileStaysNonblocking(t *testing.T) {
	a, b := pair(t)
	r, w := pipe(t)
	if err := a.SendWithFds(nil, r, w); err != nil {
		t.Fatal(err)
	}
	var v any
	fs, err := b.RecvWithFds(&v)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fs {
		f.Close()
	}
	for _, f := range []*os.File{r, w} {
		rc, _ := f.SyscallConn()
		rc.Control(func(fd uintptr) {
			flags, err := unix.FcntlInt(fd, unix.F_GETFL, 0)
			if err != nil || flags&unix.O_NONBLOCK == 0 {
				t.Errorf("sent pipe fd %d flags = %#x, %v; want O_NONBLOCK", fd, flags, err)
			}
		})
	}
	r.SetReadDeadline(time.Now().Add(time.Millisecond))
	if _, err := r.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Read() on the sent pipe past its deadline: %v, want os.ErrDeadlineExceeded", err)
	}
}

func TestReceivedFdsCloseOnExec(t *testing.T) {
	a, b := pair(t)
	ws, _ := pipes(t, 1)
	a.SendWithFds(nil, ws[0], ws[0])
	var v any
	fs, err := b.RecvWithFds(&v)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fs {
		rc, _ := f.SyscallConn()
		rc.Control(func(fd uintptr) {
			flags, err := unix.FcntlInt(fd, unix.F_GETFD, 0)
			if err != nil || flags&unix.FD_CLOEXEC == 0 {
				t.Errorf("received fd %d flags = %#x, %v; want FD_CLOEXEC", fd, flags, err)
			}
		})
		f.Close()
	}
}

// TestRecvClosesUnwantedFds: Recv of a message with fds closes them and
// says so, and the Conn goes on.
func TestRecvClosesUnwantedFds(t *testing.T) {
	checkFds(t)
	a, b := pair(t)
	ws, _ := pipes(t, 1)
	a.SendWithFds("with", ws[0], ws[0])
	a.Send("after")
	var s string
	if err := b.Recv(&s); err == nil || !strings.Contains(err.Error(), "RecvWithFds") {
		t.Fatalf("Recv() of a message with files: error = %v, want one naming RecvWithFds", err)
	}
	if err := b.Recv(&s); err != nil || s != "after" {
		t.Fatalf("Recv() = %q, %v; want \"after\", nil", s, err)
	}
}

// TestFdsClosedOnBadJSON: RecvWithFds closes the files of a message whose
// JSON does not decode.
func TestFdsClosedOnBadJSON(t *testing.T) {
	checkFds(t)
	a, b := pair(t)
	ws, _ := pipes(t, 1)
	a.SendWithFds("a string", ws[0])
	var n int
	if fs, err := b.RecvWithFds(&n); err == nil || fs != nil {
		t.Fatalf("RecvWithFds(&int) of a string = %v, %v; want nil, an error", fs, err)
	}
}

func TestEOF(t *testing.T) {
	t.Run("at a boundary, after every message", func(t *testing.T) {
		a, b := pair(t)
		a.Send(1)
		a.Send(2)
		a.Close()
		for _, want := range []int{1, 2} {
			var got int
			if err := b.Recv(&got); err != nil || got != want {
				t.Fatalf("Recv() = %d, %v; want %d, nil", got, err, want)
			}
		}
		for i := 0; i < 2; i++ {
			var v any
			if err := b.Recv(&v); err != io.EOF {
				t.Fatalf("Recv() after the peer closed: error = %v, want io.EOF", err)
			}
		}
	})
	t.Run("inside a message", func(t *testing.T) {
		c, peer := rawPair(t)
		rawSend(t, peer, frame(10, `"abc`))
		rawSend(t, peer, []byte(`def`))
		unix.Close(peer)
		var v any
		if err := c.Recv(&v); err != io.ErrUnexpectedEOF {
			t.Fatalf("Recv() error = %v, want io.ErrUnexpectedEOF", err)
		}
		if err := c.Recv(&v); err != io.EOF {
			t.Fatalf("Recv() after that: error = %v, want io.EOF", err)
		}
	})
	t.Run("after shutdown of the peer's writes", func(t *testing.T) {
		c, peer := rawPair(t)
		rawSend(t, peer, frame(1, "1"))
		unix.Shutdown(peer, unix.SHUT_WR)
		var v int
		if err := c.Recv(&v); err != nil || v != 1 {
			t.Fatalf("Recv() = %d, %v; want 1, nil", v, err)
		}
		if err := c.Recv(&v); err != io.EOF {
			t.Fatalf("Recv() error = %v, want io.EOF", err)
		}
	})
	t.Run("an empty datagram is not EOF", func(t *testing.T) {
		c, peer := rawPair(t)
		rawSend(t, peer, nil)
		var v any
		if err := c.Recv(&v); err == io.EOF || !errors.Is(err, errFrame) {
			t.Fatalf("Recv() of an empty datagram: error = %v, want a malformed frame", err)
		}
	})
}

// TestUnreadDataAtPeerClose: a peer that closes with our data unread makes
// the kernel report ECONNRESET before the messages it sent; every one of
// them still arrives, then io.EOF.
func TestUnreadDataAtPeerClose(t *testing.T) {
	a, b := pair(t)
	if err := a.Send("never read"); err != nil {
		t.Fatal(err)
	}
	big := jsonString(500000)
	done := result(func() error {
		for i := 0; i < 3; i++ {
			if err := b.Send(i); err != nil {
				return err
			}
		}
		return b.Send(big)
	})
	var got []int
	for i := 0; i < 3; i++ {
		var n int
		if err := a.Recv(&n); err != nil {
			t.Fatalf("Recv() #%d error = %v", i, err)
		}
		got = append(got, n)
	}
	var raw json.RawMessage
	if err := a.Recv(&raw); err != nil || !bytes.Equal(raw, big) {
		t.Fatalf("Recv() of the large value: %d bytes, %v", len(raw), err)
	}
	if err := await(t, done, "Send"); err != nil {
		t.Fatal(err)
	}
	// Now the case that matters: messages still queued for us when b
	// closes with our data unread.
	b.Send(10)
	b.Send(11)
	b.Close()
	for _, want := range []int{10, 11} {
		var n int
		if err := a.Recv(&n); err != nil || n != want {
			t.Fatalf("Recv() = %d, %v; want %d, nil", n, err, want)
		}
	}
	var v any
	if err := a.Recv(&v); err != io.EOF {
		t.Fatalf("Recv() at the end: error = %v, want io.EOF", err)
	}
	if !reflect.DeepEqual(got, []int{0, 1, 2}) {
		t.Errorf("received %v, want [0 1 2]", got)
	}
}

// TestUnreadDataReset checks the kernel fact the package relies on, with
// raw syscalls: a bare recvmsg gives ECONNRESET before the queued data.
func TestUnreadDataReset(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	rawSend(t, fds[0], []byte("unread"))
	rawSend(t, fds[1], []byte("queued"))
	unix.Close(fds[1])
	buf := make([]byte, 16)
	_, err = unix.Read(fds[0], buf)
	if err != unix.ECONNRESET {
		t.Fatalf("first read after the peer closed: %v, want ECONNRESET", err)
	}
	n, err := unix.Read(fds[0], buf)
	if string(buf[:n]) != "queued" || err != nil {
		t.Fatalf("second read = %q, %v; want \"queued\", nil", buf[:n], err)
	}
}

func TestCloseUnblocks(t *testing.T) {
	t.Run("Recv", func(t *testing.T) {
		a, _ := pair(t)
		done := result(func() error { var v any; return a.Recv(&v) })
		waitBlocked(t, "(*Conn).Recv")
		a.Close()
		if err := await(t, done, "Recv"); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Recv() blocked at Close: error = %v, want net.ErrClosed", err)
		}
	})
	t.Run("Send", func(t *testing.T) {
		a, _ := pair(t)
		fill(t, a)
		done := result(func() error { return a.Send("blocked") })
		waitBlocked(t, "(*Conn).Send")
		a.Close()
		if err := await(t, done, "Send"); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Send() blocked at Close: error = %v, want net.ErrClosed", err)
		}
	})
	t.Run("after Close", func(t *testing.T) {
		a, _ := pair(t)
		a.Close()
		var v any
		for name, err := range map[string]error{
			"Send":        a.Send(1),
			"SendWithFds": a.SendWithFds(1),
			"Recv":        a.Recv(&v),
			"Close":       a.Close(),
		} {
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("%s() after Close: error = %v, want net.ErrClosed", name, err)
			}
		}
		if _, err := a.RecvWithFds(&v); !errors.Is(err, net.ErrClosed) {
			t.Errorf("RecvWithFds() after Close: error = %v, want net.ErrClosed", err)
		}
	})
}

// fill sends small messages on c until the peer's queue is full, and
// leaves c without a deadline.
func fill(t testing.TB, c *Conn) int {
	t.Helper()
	c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	n := 0
	for {
		err := c.Send(n)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatalf("Send() while filling: %v", err)
		}
		n++
	}
	c.SetWriteDeadline(bounded())
	return n
}

func TestDeadlines(t *testing.T) {
	t.Run("Recv past its deadline", func(t *testing.T) {
		a, b := pair(t)
		b.SetReadDeadline(time.Now().Add(-time.Second))
		var v any
		if err := b.Recv(&v); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Recv() error = %v, want os.ErrDeadlineExceeded", err)
		}
		b.SetReadDeadline(time.Time{})
		a.Send(1)
		if err := b.Recv(&v); err != nil || v != 1.0 {
			t.Fatalf("Recv() after clearing the deadline = %v, %v; want 1, nil", v, err)
		}
	})
	t.Run("moved while Recv blocks", func(t *testing.T) {
		_, b := pair(t)
		done := result(func() error { var v any; return b.Recv(&v) })
		waitBlocked(t, "(*Conn).Recv")
		b.SetDeadline(time.Now().Add(10 * time.Millisecond))
		if err := await(t, done, "Recv"); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Recv() error = %v, want os.ErrDeadlineExceeded", err)
		}
	})
	t.Run("moved while Send blocks", func(t *testing.T) {
		a, _ := pair(t)
		fill(t, a)
		done := result(func() error { return a.Send(1) })
		waitBlocked(t, "(*Conn).Send")
		a.SetWriteDeadline(time.Now().Add(10 * time.Millisecond))
		if err := await(t, done, "Send"); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Send() error = %v, want os.ErrDeadlineExceeded", err)
		}
		// A single-datagram message that was refused whole breaks nothing.
		if err := a.SendWithFds(1); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Send() again error = %v, want os.ErrDeadlineExceeded", err)
		}
	})
	// A Recv cut by its deadline mid-message: TestLengthMoreThanSent.
}

// TestSendCutShort: a message of several datagrams that fails part-way
// breaks the send side, so the peer never sees half a value and then
// another.
func TestSendCutShort(t *testing.T) {
	c, peer := rawPair(t)
	fill(t, c)
	// Make room for exactly one datagram, then send a value needing two.
	buf := make([]byte, 1<<20)
	if _, _, _, _, err := unix.Recvmsg(peer, buf, nil, 0); err != nil {
		t.Fatal(err)
	}
	c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	err := c.Send(jsonString(c.dgram + 100))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Send() error = %v, want os.ErrDeadlineExceeded", err)
	}
	// A broken send side answers at once; the deadline only keeps a
	// regression from hanging here on the full queue.
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := c.Send(1); err == nil || !strings.Contains(err.Error(), "send side broken") {
		t.Fatalf("Send() after a cut message: error = %v, want send side broken", err)
	}
}

// TestConcurrentLargeSenders: messages of several datagrams from many
// goroutines arrive whole, never interleaved.
func TestConcurrentLargeSenders(t *testing.T) {
	a, b := pair(t)
	const senders, each = 4, 10
	var wg sync.WaitGroup
	errs := make(chan error, senders)
	for s := 0; s < senders; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				v := strings.Repeat(string(rune('a'+s)), 300000+i)
				if err := a.Send(v); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	count := map[byte]int{}
	for i := 0; i < senders*each; i++ {
		var s string
		if err := b.Recv(&s); err != nil {
			t.Fatalf("Recv() error = %v", err)
		}
		if strings.Count(s, s[:1]) != len(s) || len(s) != 300000+count[s[0]] {
			t.Fatalf("Recv() = a corrupt value of %d bytes starting %q", len(s), s[:1])
		}
		count[s[0]]++
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Send() error = %v", err)
	}
}

func TestFileConn(t *testing.T) {
	t.Run("refuses what is not a connected SEQPACKET socket", func(t *testing.T) {
		checkFds(t)
		stream, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		lone, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		// A refused socket is left as it was: still non-blocking, with no
		// receive timeout.
		if err := unix.SetNonblock(stream[0], true); err != nil {
			t.Fatal(err)
		}
		keep, err := unix.Dup(stream[0]) // the same description and socket
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			fl, _ := unix.FcntlInt(uintptr(keep), unix.F_GETFL, 0)
			tv, _ := unix.GetsockoptTimeval(keep, unix.SOL_SOCKET, unix.SO_RCVTIMEO)
			if fl&unix.O_NONBLOCK == 0 || tv.Sec != 0 || tv.Usec != 0 {
				t.Errorf("refused stream socket changed: O_NONBLOCK %v, SO_RCVTIMEO %v", fl&unix.O_NONBLOCK != 0, tv)
			}
			unix.Close(keep)
			unix.Close(stream[1])
		}()
		udp, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Connect(udp, &unix.SockaddrInet4{Port: 9, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			t.Fatal(err)
		}
		r, w, _ := os.Pipe()
		for name, f := range map[string]*os.File{
			"stream":        os.NewFile(uintptr(stream[0]), "stream"),
			"unconnected":   os.NewFile(uintptr(lone), "lone"),
			"pipe":          r,
			"connected udp": os.NewFile(uintptr(udp), "udp"),
		} {
			if c, err := FileConn(f); err == nil {
				c.Close()
				t.Errorf("FileConn(%s) error = nil, want one", name)
			}
			f.Close()
		}
		w.Close()
	})
	t.Run("an end sent over another channel", func(t *testing.T) {
		checkFds(t)
		a, b := pair(t)
		x, y := pair(t)
		f, err := y.File()
		if err != nil {
			t.Fatal(err)
		}
		y.Close()
		if err := a.SendWithFds("take this", f); err != nil {
			t.Fatal(err)
		}
		f.Close()
		var s string
		fs, err := b.RecvWithFds(&s)
		if err != nil || len(fs) != 1 {
			t.Fatalf("RecvWithFds() = %d files, %v", len(fs), err)
		}
		y2, err := FileConn(fs[0])
		fs[0].Close()
		if err != nil {
			t.Fatalf("FileConn(received) error = %v", err)
		}
		defer y2.Close()
		x.Send("over the new channel")
		if err := y2.Recv(&s); err != nil || s != "over the new channel" {
			t.Fatalf("Recv() = %q, %v", s, err)
		}
	})
}

// TestSendToGonePeer: Send to a closed peer is EPIPE, as an error (the
// package sends with MSG_NOSIGNAL), never a SIGPIPE.
func TestSendToGonePeer(t *testing.T) {
	a, b := pair(t)
	b.Close()
	for _, v := range []any{1, jsonString(a.dgram + 10)} {
		if err := a.Send(v); !errors.Is(err, syscall.EPIPE) {
			t.Fatalf("Send() to a closed peer: error = %v, want EPIPE", err)
		}
	}
}

// TestSendRawMessage: a json.RawMessage goes as it is; a *json.RawMessage
// goes through encoding/json, which compacts it, as Send's doc says.
func TestSendRawMessage(t *testing.T) {
	a, b := pair(t)
	raw := json.RawMessage("{ \"a\" : [1, 2] }")
	for _, tc := range []struct {
		v    any
		want string
	}{{raw, string(raw)}, {&raw, `{"a":[1,2]}`}} {
		if err := a.Send(tc.v); err != nil {
			t.Fatal(err)
		}
		var got json.RawMessage
		if err := b.Recv(&got); err != nil || string(got) != tc.want {
			t.Errorf("Send(%T) arrived as %q, %v; want %q", tc.v, got, err, tc.want)
		}
	}
}
