//go:build linux

package channel

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The tests here face a Conn with a peer that does not use the package:
// hand-built datagrams and SCM_RIGHTS sent with raw syscalls. Each checks
// the error it must give and that no descriptor leaked.

func TestShortDatagrams(t *testing.T) {
	for n := 0; n < headerLen; n++ {
		t.Run(fmt.Sprint(n, " bytes"), func(t *testing.T) {
			checkFds(t)
			c, peer := rawPair(t)
			rawSend(t, peer, make([]byte, n))
			var v any
			err := c.Recv(&v)
			if !errors.Is(err, errFrame) || !strings.Contains(err.Error(), "shorter than") {
				t.Fatalf("Recv() of %d bytes: error = %v, want shorter than the header", n, err)
			}
		})
	}
}

func TestHeaderOnly(t *testing.T) {
	t.Run("length 0", func(t *testing.T) {
		c, peer := rawPair(t)
		rawSend(t, peer, frame(0, ""))
		rawSend(t, peer, frame(2, "{}"))
		var v map[string]any
		var se *json.SyntaxError
		if err := c.Recv(&v); !errors.As(err, &se) {
			t.Fatalf("Recv() of empty JSON: error = %v, want a *json.SyntaxError", err)
		}
		if err := c.Recv(&v); err != nil {
			t.Fatalf("Recv() of the next message: %v", err)
		}
	})
	t.Run("length 10, then close", func(t *testing.T) {
		checkFds(t)
		c, peer := rawPair(t)
		rawSend(t, peer, frame(10, ""))
		unix.Close(peer)
		var v any
		if err := c.Recv(&v); err != io.ErrUnexpectedEOF {
			t.Fatalf("Recv() error = %v, want io.ErrUnexpectedEOF", err)
		}
	})
}

// TestHugeLengths announces lengths over the maximum: refused, and nothing
// of the announced size allocated.
func TestHugeLengths(t *testing.T) {
	lengths := []uint64{1<<64 - 1}
	for p := uint64(maxLen) << 1; p != 0; p <<= 1 {
		lengths = append(lengths, p)
	}
	for _, n := range lengths {
		checkFds(t)
		c, peer := rawPair(t)
		d := binary.LittleEndian.AppendUint64(nil, n)
		rawSend(t, peer, append(d, `"x"`...))
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		var v any
		err := c.Recv(&v)
		runtime.ReadMemStats(&after)
		if !errors.Is(err, errFrame) || !strings.Contains(err.Error(), "over the limit") {
			t.Fatalf("Recv() of length %d: error = %v, want over the limit", n, err)
		}
		// TotalAlloc counts every allocation, even one already collected.
		if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
			t.Errorf("Recv() of length %d allocated %d bytes", n, grew)
		}
	}
	t.Logf("%d lengths refused", len(lengths))
}

func TestLengthMoreThanSent(t *testing.T) {
	checkFds(t)
	c, peer := rawPair(t)
	ws, _ := pipes(t, 1)
	wfd := rawFd(t, ws[0])
	rawSend(t, peer, frame(7, `"abc`), wfd)
	// Silence: Recv honours its deadline, and keeps what came.
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	var s string
	if _, err := c.RecvWithFds(&s); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("RecvWithFds() error = %v, want os.ErrDeadlineExceeded", err)
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if err := c.Recv(&s); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Recv() again: error = %v, want os.ErrDeadlineExceeded", err)
	}
	c.SetReadDeadline(bounded())
	// The rest arrives: the message is resumed, with its file.
	rawSend(t, peer, []byte(`de"`))
	fs, err := c.RecvWithFds(&s)
	if err != nil || s != "abcde" || len(fs) != 1 {
		t.Fatalf("RecvWithFds() = %q, %d files, %v; want \"abcde\", 1 file", s, len(fs), err)
	}
	fs[0].Close()
	// Again, and this time the peer closes instead.
	rawSend(t, peer, frame(7, `"abc`), wfd)
	unix.Close(peer)
	if _, err := c.RecvWithFds(&s); err != io.ErrUnexpectedEOF {
		t.Fatalf("RecvWithFds() error = %v, want io.ErrUnexpectedEOF", err)
	}
}

// rawFd returns f's descriptor without Fd(), which would make f blocking.
func rawFd(t testing.TB, f *os.File) int {
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	rc.Control(func(s uintptr) { fd = int(s) })
	return fd
}

// TestHeaderWhereContinuationDue: a new message where the rest of the last
// one was due is taken as its bytes; the value does not decode (or the
// frame is too long), and no descriptor leaks.
func TestHeaderWhereContinuationDue(t *testing.T) {
	checkFds(t)
	c, peer := rawPair(t)
	rawSend(t, peer, frame(20, `"abc`))
	rawSend(t, peer, frame(3, `"x"`))
	rawSend(t, peer, []byte(`12345`))
	rawSend(t, peer, frame(3, `"y"`))
	var s string
	var se *json.SyntaxError
	if err := c.Recv(&s); !errors.As(err, &se) {
		t.Fatalf("Recv() error = %v, want a *json.SyntaxError", err)
	}
	if err := c.Recv(&s); err != nil || s != "y" {
		t.Fatalf("Recv() = %q, %v; want \"y\"", s, err)
	}
	rawSend(t, peer, frame(4, `"ab`))
	rawSend(t, peer, frame(3, `"x"`))
	if err := c.Recv(&s); !errors.Is(err, errFrame) {
		t.Fatalf("Recv() error = %v, want a malformed frame", err)
	}
}

func TestRawFds(t *testing.T) {
	t.Run("read with Recv", func(t *testing.T) {
		checkFds(t)
		c, peer := rawPair(t)
		ws, _ := pipes(t, 1)
		rawSend(t, peer, frame(2, `""`), rawFd(t, ws[0]), rawFd(t, ws[0]))
		rawSend(t, peer, frame(3, `"n"`))
		var s string
		if err := c.Recv(&s); err == nil || !strings.Contains(err.Error(), "2 files") {
			t.Fatalf("Recv() error = %v, want one about 2 files", err)
		}
		if err := c.Recv(&s); err != nil || s != "n" {
			t.Fatalf("Recv() = %q, %v", s, err)
		}
	})
	t.Run("253 to RecvWithFds", func(t *testing.T) {
		checkFds(t)
		c, peer := rawPair(t)
		ws, read := pipes(t, 1)
		fds := make([]int, maxFds)
		for i := range fds {
			fds[i] = rawFd(t, ws[0])
		}
		rawSend(t, peer, frame(3, "253"), fds...)
		var n int
		fs, err := c.RecvWithFds(&n)
		if err != nil || n != 253 || len(fs) != 253 {
			t.Fatalf("RecvWithFds() = %d, %d files, %v", n, len(fs), err)
		}
		fmt.Fprint(fs[252], "last")
		for _, f := range fs {
			f.Close()
		}
		if s := read(0); s != "last" {
			t.Errorf("read %q through the 253rd file, want \"last\"", s)
		}
	})
}

func TestBadJSON(t *testing.T) {
	deep := strings.Repeat("[", 100000) + strings.Repeat("]", 100000)
	tests := []struct {
		name string
		json string
	}{
		{"invalid", `{"a" 1}`},
		{"truncated", `{"a": [1, 2`},
		{"nested 100,000 deep", deep},
		{"wrong type", `{"a": "not a number"}`},
		{"not UTF-8 in a string", "{\"b\": \"\xff\"}"},
		{"trailing garbage", `{"a": 1} x`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkFds(t)
			c, peer := rawPair(t)
			ws, _ := pipes(t, 1)
			rawSend(t, peer, frame(len(tt.json), tt.json), rawFd(t, ws[0]))
			rawSend(t, peer, frame(8, `{"a": 7}`))
			var v struct{ A int }
			fs, err := c.RecvWithFds(&v)
			if tt.name == "not UTF-8 in a string" {
				// encoding/json replaces invalid UTF-8: not an error.
				if err != nil || len(fs) != 1 {
					t.Fatalf("RecvWithFds() = %d files, %v", len(fs), err)
				}
				fs[0].Close()
			} else if se, te := new(json.SyntaxError), new(json.UnmarshalTypeError); !errors.As(err, &se) && !errors.As(err, &te) {
				t.Fatalf("RecvWithFds() error = %v, want the encoding/json error", err)
			}
			if err := c.Recv(&v); err != nil || v.A != 7 {
				t.Fatalf("Recv() of the next message = %+v, %v", v, err)
			}
		})
	}
}

// TestRawPeerClosesWithUnread: a raw peer sends and closes at once with our
// data unread: all it sent is received, then io.EOF.
func TestRawPeerClosesWithUnread(t *testing.T) {
	c, peer := rawPair(t)
	if err := c.Send("unread"); err != nil {
		t.Fatal(err)
	}
	big := jsonString(150000)
	for i := 0; i < 5; i++ {
		rawSend(t, peer, frame(1, fmt.Sprint(i)))
	}
	rawSend(t, peer, append(frame(len(big), ""), big[:100000]...))
	rawSend(t, peer, big[100000:])
	unix.Close(peer)
	for i := 0; i < 5; i++ {
		var n int
		if err := c.Recv(&n); err != nil || n != i {
			t.Fatalf("Recv() = %d, %v; want %d", n, err, i)
		}
	}
	var raw json.RawMessage
	if err := c.Recv(&raw); err != nil || !bytes.Equal(raw, big) {
		t.Fatalf("Recv() of the large value = %d bytes, %v", len(raw), err)
	}
	if err := c.Recv(&raw); err != io.EOF {
		t.Fatalf("Recv() error = %v, want io.EOF", err)
	}
}

// TestPeerStopsReading: Send honours its write deadline against a peer that
// reads nothing, and a message cut part-way breaks the send side.
func TestPeerStopsReading(t *testing.T) {
	c, _ := rawPair(t)
	n := fill(t, c)
	c.SetWriteDeadline(time.Now().Add(20 * time.Millisecond))
	if err := c.Send(1); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Send() to a full queue: %v, want os.ErrDeadlineExceeded", err)
	}
	t.Logf("peer's queue took %d small messages", n)
}

// TestSignalStorm moves large values to and from a child while signals rain
// on this process and the child is stopped and continued.
func TestSignalStorm(t *testing.T) {
	checkFds(t)
	c, cmd, stderr := start(t, "echo")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	signals := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				cmd.Process.Signal(syscall.SIGCONT)
				return
			default:
			}
			unix.Kill(os.Getpid(), unix.SIGURG)
			unix.Kill(os.Getpid(), unix.SIGCHLD)
			cmd.Process.Signal(syscall.SIGSTOP)
			runtime.Gosched()
			cmd.Process.Signal(syscall.SIGCONT)
			signals += 4
		}
	}()
	rnd := rand.New(rand.NewSource(1))
	for i := 0; i < 40; i++ {
		b := make([]byte, 100000+rnd.Intn(1<<20))
		rnd.Read(b)
		c.SetDeadline(bounded())
		if err := c.Send(b); err != nil {
			t.Fatalf("Send() #%d error = %v; child stderr %q", i, err, stderr)
		}
		var got []byte
		if err := c.Recv(&got); err != nil || !bytes.Equal(got, b) {
			t.Fatalf("Recv() #%d = %d bytes, %v; want the %d sent", i, len(got), err, len(b))
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("%d signals sent during 40 round trips", signals)
}

// TestChildKilledAtRandom kills children at random moments during 1,000
// exchanges in all: the parent never hangs and never leaks.
func TestChildKilledAtRandom(t *testing.T) {
	checkFds(t)
	rnd := rand.New(rand.NewSource(2))
	exchanges, children := 0, 0
	for exchanges < 1000 {
		children++
		c, cmd, _ := start(t, "echo")
		killAt := time.Duration(rnd.Intn(20000)) * time.Microsecond
		timer := time.AfterFunc(killAt, func() { cmd.Process.Kill() })
		for {
			v := jsonString(2 + rnd.Intn(400000))
			if rnd.Intn(4) > 0 {
				v = jsonString(2 + rnd.Intn(100))
			}
			exchanges++
			err := c.Send(v)
			var got json.RawMessage
			if err == nil {
				err = c.Recv(&got)
			}
			if err == nil {
				if !bytes.Equal(got, v) {
					t.Fatalf("Recv() = %d bytes, want the %d sent", len(got), len(v))
				}
				continue
			}
			if err != io.EOF && err != io.ErrUnexpectedEOF && !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("exchange %d with a killed child: %v", exchanges, err)
			}
			break
		}
		timer.Stop()
		c.Close()
		cmd.Wait()
	}
	t.Logf("%d exchanges with %d children killed at random", exchanges, children)
}

// TestLoad: 8 goroutines send 100,000 values each, some of several
// datagrams, with files on every tenth, while 2 goroutines receive. Every
// value arrives exactly once, intact, with its own file.
func TestLoad(t *testing.T) {
	checkFds(t)
	senders, each := 8, 100000
	if testing.Short() {
		each = 5000
	}
	a, b := pair(t)
	type msg struct {
		S, I int
		Pad  string
	}
	var wg sync.WaitGroup
	errs := make(chan error, senders+2)
	for s := 0; s < senders; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				m := msg{S: s, I: i}
				if i%5000 == 4999 {
					m.Pad = strings.Repeat("p", 250000)
				}
				var err error
				if i%10 == 0 {
					err = sendWithMemfd(a, m, fmt.Sprint(s, ":", i))
				} else {
					a.SetWriteDeadline(bounded())
					err = a.Send(m)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	seen := make([][]bool, senders)
	for s := range seen {
		seen[s] = make([]bool, each)
	}
	var mu sync.Mutex
	var rwg sync.WaitGroup
	total := senders * each
	received := 0
	for r := 0; r < 2; r++ {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			for {
				var m msg
				b.SetReadDeadline(bounded())
				fs, err := b.RecvWithFds(&m)
				if err == io.EOF {
					return
				}
				if err != nil {
					errs <- err
					return
				}
				want := 0
				if m.I%10 == 0 {
					want = 1
				}
				if len(fs) != want || (m.I%5000 == 4999) != (len(m.Pad) == 250000) {
					errs <- fmt.Errorf("message %d:%d came with %d files and %d bytes of padding", m.S, m.I, len(fs), len(m.Pad))
					return
				}
				for _, f := range fs {
					b := make([]byte, 32)
					n, _ := f.ReadAt(b, 0)
					f.Close()
					if string(b[:n]) != fmt.Sprint(m.S, ":", m.I) {
						errs <- fmt.Errorf("message %d:%d came with the file of %q", m.S, m.I, b[:n])
						return
					}
				}
				mu.Lock()
				dup := seen[m.S][m.I]
				seen[m.S][m.I] = true
				received++
				mu.Unlock()
				if dup {
					errs <- fmt.Errorf("message %d:%d arrived twice", m.S, m.I)
					return
				}
			}
		}()
	}
	wg.Wait()
	a.Close() // the receivers end at io.EOF once the queue is drained
	rwg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if received != total {
		t.Fatalf("received %d values, want %d", received, total)
	}
	t.Logf("%d values moved, %d with a file, %d of several datagrams", total, total/10, senders*(each/5000))
}

// sendWithMemfd sends v with a new memfd that holds text.
func sendWithMemfd(c *Conn, v any, text string) error {
	fd, err := unix.MemfdCreate("load", unix.MFD_CLOEXEC)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), "memfd")
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		return err
	}
	return c.SendWithFds(v, f)
}

// FuzzConn feeds a Conn arbitrary datagrams, some carrying fds, from a raw
// peer, then closes the peer: the Conn must answer every Recv with a value
// or an error, never panic or hang, and close every fd it does not return.
func FuzzConn(f *testing.F) {
	f.Add([]byte("\x0a\x03\x00\x00\x00\x00\x00\x00\x00\"x\""))
	f.Add([]byte("\x8c\x0a\x00\x00\x00\x00\x00\x00\x00\"abc\x05de\"xy"))
	f.Add([]byte("\x02\x01\x00\x00"))
	f.Add([]byte("\x0b\x02\x00\x00\x00\x00\x00\x00\x00[]\x80"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, w := pipe(t)
		before := fdCount(t)
		c, peer := rawPair(t)
		wfd := rawFd(t, w)
		// data is a list of datagrams: a length byte (low 6 bits; 0x40
		// attaches one fd, 0x80 two) and then that many bytes.
		sent := 0
		for len(data) > 0 && sent < 64 {
			n := int(data[0] & 0x3f)
			var fds []int
			if data[0]&0x40 != 0 {
				fds = append(fds, wfd)
			}
			if data[0]&0x80 != 0 {
				fds = append(fds, wfd, wfd)
			}
			data = data[1:]
			n = min(n, len(data))
			rawSend(t, peer, data[:n], fds...)
			data = data[n:]
			sent++
		}
		unix.Close(peer)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		raw := make(json.RawMessage, 0, 64) // one in two values goes here
		for i := 0; i <= sent; i++ {
			var v any
			var fs []*os.File
			var err error
			if i%2 == 0 {
				fs, err = c.RecvWithFds(&v)
			} else if fs, err = c.RecvWithFds(&raw); err == nil && !json.Valid(raw) {
				t.Fatalf("Recv into a json.RawMessage accepted %q", raw)
			}
			for _, f := range fs {
				f.Close()
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal("Recv() hung on a closed peer")
			}
			if err == io.EOF || errors.Is(err, errFrame) {
				break
			}
		}
		c.Close()
		if after := fdCount(t); after != before {
			t.Fatalf("open descriptors: %d before, %d after", before, after)
		}
	})
}

// TestRawMessage: json.RawMessage skips a pass through encoding/json, not
// its validation: invalid JSON is refused on both sides.
func TestRawMessage(t *testing.T) {
	c, peer := rawPair(t)
	if err := c.Send(json.RawMessage(`{"a": 1`)); err == nil {
		t.Fatal("Send(invalid RawMessage) error = nil, want one")
	}
	rawSend(t, peer, frame(7, `{"a": 1`))
	rawSend(t, peer, frame(9, ` [1, 2 ] `))
	raw := json.RawMessage("left over")
	var se *json.SyntaxError
	if err := c.Recv(&raw); !errors.As(err, &se) {
		t.Fatalf("Recv(&RawMessage) of invalid JSON: error = %v, want a *json.SyntaxError", err)
	}
	var want json.RawMessage
	if err := json.Unmarshal([]byte(` [1, 2 ] `), &want); err != nil {
		t.Fatal(err)
	}
	if err := c.Recv(&raw); err != nil || string(raw) != string(want) {
		t.Fatalf("Recv(&RawMessage) = %q, %v; want %q, the value without the space around it, as json.Unmarshal gives", raw, err, want)
	}
	if err := c.Send(json.RawMessage(`{ "b" : [true] }`)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := unix.Read(peer, buf)
	if err != nil || string(buf[headerLen:n]) != `{ "b" : [true] }` {
		t.Fatalf("peer read %q, %v; want the RawMessage as it was", buf[:n], err)
	}
	// Nested deeper than validJSON looks: json.Valid decides, and the
	// value still goes as it is.
	deep := strings.Repeat("[ ", 600) + strings.Repeat("] ", 600)
	if err := c.Send(json.RawMessage(deep)); err != nil {
		t.Fatal(err)
	}
	if n, err = unix.Read(peer, buf); err != nil || string(buf[headerLen:n]) != deep {
		t.Fatalf("peer read %.20q, %v; want the RawMessage as it was", buf[:n], err)
	}
	rawSend(t, peer, frame(len(deep), deep))
	if err := c.Recv(&raw); err != nil || string(raw) != strings.TrimSpace(deep) {
		t.Fatalf("Recv(&RawMessage) of a deep value = %.20q, %v", raw, err)
	}
}

// TestRawMessageInPlace: a json.RawMessage of several datagrams is
// reassembled in the memory of the RawMessage received into, when it has
// room, and that memory is left alone once a Recv has returned, even one
// that timed out half-way through the message.
func TestRawMessageInPlace(t *testing.T) {
	c, peer := rawPair(t)
	value := jsonString(3000)
	sendParts := func(parts ...[]byte) {
		for _, p := range parts {
			rawSend(t, peer, p)
		}
	}
	first, second, third := frame(len(value), string(value[:1000])), value[1000:2000], value[2000:]

	raw := make(json.RawMessage, 0, 4096)
	mem := &raw[:1][0]
	sendParts(first, second, third)
	if err := c.Recv(&raw); err != nil || string(raw) != string(value) {
		t.Fatalf("Recv = %.20q..., %v; want the value", raw, err)
	}
	if &raw[0] != mem {
		t.Fatal("Recv did not reassemble the value in the RawMessage's memory")
	}
	small := make(json.RawMessage, 0, 10)
	sendParts(first, second, third)
	if err := c.Recv(&small); err != nil || string(small) != string(value) {
		t.Fatalf("Recv into a small RawMessage = %.20q..., %v; want the value", small, err)
	}

	// Half a message, a timeout, then the rest into another variable.
	buf := make(json.RawMessage, 0, 4096)
	sendParts(first, second)
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if err := c.Recv(&buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Recv of half a message: %v, want a timeout", err)
	}
	c.SetReadDeadline(bounded())
	before := bytes.Clone(buf[:cap(buf)])
	sendParts(third)
	var other json.RawMessage
	if err := c.Recv(&other); err != nil || string(other) != string(value) {
		t.Fatalf("resumed Recv = %.20q..., %v; want the value", other, err)
	}
	if !bytes.Equal(buf[:cap(buf)], before) {
		t.Fatal("the resumed message was written into the memory of the Recv that timed out")
	}
}
