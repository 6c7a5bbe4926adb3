//go:build linux

package channel

// Benchmarks across processes: the child is started with the package's own
// re-exec helper, and each benchmark of the package stands beside floors
// that move the same bytes without it. Sub-benchmarks are named impl=...;
// bench.sh runs them all and prints the ratios.

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/rpc"
	"net/rpc/jsonrpc"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Small is the value of the round-trip benchmarks: 70 bytes of JSON.
type Small struct {
	ID     int     `json:"id"`
	Op     string  `json:"op"`
	Path   string  `json:"path"`
	OK     bool    `json:"ok"`
	Weight float64 `json:"weight"`
}

var smallValue = Small{ID: 12345, Op: "stat", Path: "/var/lib/app/data.db", OK: true, Weight: 0.75}

// smallFrame is smallValue as this package frames it: what the floors move.
var smallFrame = func() []byte {
	b, _ := json.Marshal(smallValue)
	return append(binary.LittleEndian.AppendUint64(nil, uint64(len(b))), b...)
}()

// Echo is the net/rpc service of the net/rpc benchmark.
type Echo struct{}

func (Echo) Echo(v Small, r *Small) error { *r = v; return nil }

func init() {
	Register("bench-echo", func(c *Conn) error {
		for {
			var v Small
			fs, err := c.RecvWithFds(&v)
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			err = c.SendWithFds(v, fs...)
			for _, f := range fs {
				f.Close()
			}
			if err != nil {
				return err
			}
		}
	})
	// The floors' child: recvmsg and sendmsg back. os.Args[1] names the
	// floor (see floorIO); with "api" after it, it also does apiWork.
	Register("bench-floor-echo", func(c *Conn) error {
		send, recv, done := floorIO(c, os.Args[1])
		defer done()
		w := apiWork{on: len(os.Args) > 2 && os.Args[2] == "api"}
		buf, oob := make([]byte, 1<<16), make([]byte, unix.CmsgSpace(4))
		for {
			n, oobn, err := recv(buf, oob)
			if errors.Is(err, io.EOF) || err == nil && n == 0 {
				return nil
			}
			if err != nil {
				return err
			}
			fds, files := w.take(parseRights(oob[:oobn], nil))
			v, err := w.decode(buf[:n])
			if err != nil {
				return err
			}
			err = send(w.frame(v, buf[:n]), oob[:oobn])
			w.close(fds, files)
			if err != nil {
				return err
			}
		}
	})
	// A goroutine spinning until the parent closes the channel.
	Register("bench-spin", func(c *Conn) error {
		var stop atomic.Bool
		go func() {
			for n := 0; !stop.Load(); n++ {
			}
		}()
		err := c.Recv(new(any))
		stop.Store(true)
		if err == io.EOF {
			return nil
		}
		return err
	})
	// Newline-delimited JSON over two pipes, fds 3 and 4.
	Register("bench-ndjson-echo", func(c *Conn) error {
		dec := json.NewDecoder(os.NewFile(3, "in"))
		enc := json.NewEncoder(os.NewFile(4, "out"))
		for {
			var v Small
			if err := dec.Decode(&v); err == io.EOF {
				return nil
			} else if err != nil {
				return err
			}
			if err := enc.Encode(v); err != nil {
				return err
			}
		}
	})
	// net/rpc with its JSON codec on a stream socket, fd 3.
	Register("bench-rpc-echo", func(c *Conn) error {
		conn, err := net.FileConn(os.NewFile(3, "rpc"))
		if err != nil {
			return err
		}
		s := rpc.NewServer()
		s.Register(Echo{})
		s.ServeCodec(jsonrpc.NewServerCodec(conn))
		return nil
	})
	// Sinks for one-way throughput: the first message says how many
	// values (or, raw, how many bytes) follow; the sink answers when done.
	Register("bench-sink", func(c *Conn) error {
		var n int
		if err := c.Recv(&n); err != nil {
			return err
		}
		// Each value into the same variable, as the raw sink reuses its
		// buffer: Recv reuses a json.RawMessage's memory.
		var small Small
		var raw json.RawMessage
		for i := 0; i < n; i++ {
			var err error
			if os.Args[1] == "small" {
				err = c.Recv(&small)
			} else {
				err = c.Recv(&raw)
			}
			if err != nil {
				return err
			}
		}
		return c.Send(n)
	})
	Register("bench-raw-sink", func(c *Conn) error {
		fd, f := rawSocket(c, true)
		defer f.Close()
		buf := make([]byte, 1<<20)
		k, err := unix.Read(fd, buf)
		if err != nil || k != 8 {
			return fmt.Errorf("read count: %d, %v", k, err)
		}
		want := binary.LittleEndian.Uint64(buf)
		for got := uint64(0); got < want; {
			n, _, _, _, err := unix.Recvmsg(fd, buf, nil, 0)
			if err != nil || n == 0 {
				return fmt.Errorf("recvmsg after %d of %d bytes: %v", got, want, err)
			}
			got += uint64(n)
		}
		_, err = unix.Write(fd, []byte{1})
		return err
	})
}

// apiWork is what the signatures of the four verbs make any
// implementation do besides moving bytes: encode and decode the value with
// encoding/json, and hand each received fd over as an *os.File, which its
// user closes. The floors named +api do it; with on false it does nothing,
// and the floor moves smallFrame as it is.
type apiWork struct {
	on  bool
	buf bytes.Buffer
	enc *json.Encoder
}

// frame returns the frame that carries v: the value encoded anew, or
// without the work, raw as it is.
func (w *apiWork) frame(v Small, raw []byte) []byte {
	if !w.on {
		return raw
	}
	if w.enc == nil {
		w.enc = json.NewEncoder(&w.buf)
		w.enc.SetEscapeHTML(false)
	}
	w.buf.Reset()
	w.buf.Write(make([]byte, headerLen))
	w.enc.Encode(v)
	b := w.buf.Bytes()[:w.buf.Len()-1]
	putHeader(b, len(b)-headerLen)
	return b
}

func (w *apiWork) decode(frame []byte) (Small, error) {
	var v Small
	if !w.on {
		return v, nil
	}
	err := json.Unmarshal(frame[headerLen:], &v)
	return v, err
}

// take makes received fds *os.File, as RecvWithFds does.
func (w *apiWork) take(fds []int) ([]int, []*os.File) {
	if !w.on || len(fds) == 0 {
		return fds, nil
	}
	files := make([]*os.File, len(fds))
	for i, fd := range fds {
		files[i] = os.NewFile(uintptr(fd), "fd")
	}
	return fds, files
}

// close closes what take returned.
func (w *apiWork) close(fds []int, files []*os.File) {
	if files == nil {
		closeFds(fds)
	}
	for _, f := range files {
		f.Close()
	}
}

// floorIO turns c into a bare floor transport, and returns its sendmsg and
// recvmsg and what to call when done:
//   - blocking: blocking sendmsg and recvmsg (golang.org/x/sys/unix);
//   - poller: the runtime poller, as a user of net.UnixConn has it.
func floorIO(c *Conn, floor string) (send func(p, oob []byte) error, recv func(p, oob []byte) (n, oobn int, err error), done func()) {
	if floor == "blocking" {
		fd, f := rawSocket(c, true)
		send = func(p, oob []byte) error {
			_, err := unix.SendmsgN(fd, p, oob, nil, unix.MSG_NOSIGNAL)
			return err
		}
		recv = func(p, oob []byte) (int, int, error) {
			n, oobn, _, _, err := unix.Recvmsg(fd, p, oob, unix.MSG_CMSG_CLOEXEC)
			return n, oobn, err
		}
		return send, recv, func() { f.Close() }
	}
	_, f := rawSocket(c, false)
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		panic(err)
	}
	uc := nc.(*net.UnixConn)
	send = func(p, oob []byte) error {
		_, _, err := uc.WriteMsgUnix(p, oob, nil)
		return err
	}
	recv = func(p, oob []byte) (int, int, error) {
		n, oobn, _, _, err := uc.ReadMsgUnix(p, oob)
		return n, oobn, err
	}
	return send, recv, func() { uc.Close() }
}

// rawSocket turns c into a raw descriptor, blocking or not; f owns it.
func rawSocket(c *Conn, blocking bool) (int, *os.File) {
	f, err := c.File()
	if err != nil {
		panic(err)
	}
	c.Close()
	rc, _ := f.SyscallConn()
	var fd int
	rc.Control(func(s uintptr) { fd = int(s) })
	unix.SetNonblock(fd, !blocking)
	// The Conn's SO_RCVTIMEO would end a floor's blocking recvmsg.
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{})
	return fd, f
}

// startBench starts a child for a benchmark, stopped when it ends.
func startBench(b *testing.B, name string, setup func(*exec.Cmd), args ...string) *Conn {
	b.Helper()
	cmd := Command(name, args...)
	cmd.Stderr = os.Stderr
	if setup != nil {
		setup(cmd)
	}
	c, err := Start(cmd)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		c.Close()
		if err := cmd.Wait(); err != nil {
			b.Errorf("child %s: %v", name, err)
		}
	})
	return c
}

// BenchmarkRoundTrip sends the Small value to a child and back.
func BenchmarkRoundTrip(b *testing.B) { roundTrips(b) }

// BenchmarkRoundTripBusy is BenchmarkRoundTrip with one CPU kept busy by
// a goroutine spinning in another process, as on a loaded machine: the
// CPUs are awake, and the two ends share what is left.
func BenchmarkRoundTripBusy(b *testing.B) {
	startBench(b, "bench-spin", nil)
	roundTrips(b)
}

func roundTrips(b *testing.B) {
	for _, fds := range []int{0, 1} {
		// Each floor, and each +api: the same doing apiWork on both sides,
		// the least an implementation of the four verbs can cost there.
		for _, fl := range []string{"blocking", "blocking+api", "poller", "poller+api"} {
			b.Run(fmt.Sprintf("fds=%d/impl=%s", fds, fl), func(b *testing.B) {
				floor, work, _ := strings.Cut(fl, "+")
				c := startBench(b, "bench-floor-echo", nil, floor, work)
				send, recv, done := floorIO(c, floor)
				defer done()
				w := apiWork{on: work == "api"}
				oob, rbuf, roob := sendOOB(b, fds), make([]byte, 1<<16), make([]byte, unix.CmsgSpace(4))
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if err := send(w.frame(smallValue, smallFrame), oob); err != nil {
						b.Fatal(err)
					}
					n, oobn, err := recv(rbuf, roob)
					if err != nil {
						b.Fatal(err)
					}
					fds, files := w.take(parseRights(roob[:oobn], nil))
					if _, err := w.decode(rbuf[:n]); err != nil {
						b.Fatal(err)
					}
					w.close(fds, files)
				}
			})
		}
		b.Run(fmt.Sprintf("fds=%d/impl=channel", fds), func(b *testing.B) {
			c := startBench(b, "bench-echo", nil)
			var files []*os.File
			if fds == 1 {
				files = []*os.File{os.Stdin}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := c.SendWithFds(smallValue, files...); err != nil {
					b.Fatal(err)
				}
				var v Small
				fs, err := c.RecvWithFds(&v)
				if err != nil {
					b.Fatal(err)
				}
				for _, f := range fs {
					f.Close()
				}
			}
		})
	}
	b.Run("fds=0/impl=ndjson", func(b *testing.B) {
		var in, out *os.File
		c := startBench(b, "bench-ndjson-echo", func(cmd *exec.Cmd) {
			r1, w1, _ := os.Pipe()
			r2, w2, _ := os.Pipe()
			cmd.ExtraFiles = []*os.File{r1, w2}
			in, out = r2, w1
			b.Cleanup(func() { r1.Close(); w2.Close() })
		})
		defer c.Close()
		defer in.Close()
		enc, dec := json.NewEncoder(out), json.NewDecoder(in)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if err := enc.Encode(smallValue); err != nil {
				b.Fatal(err)
			}
			var v Small
			if err := dec.Decode(&v); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		out.Close()
	})
	b.Run("fds=0/impl=netrpc", func(b *testing.B) {
		var client *rpc.Client
		startBench(b, "bench-rpc-echo", func(cmd *exec.Cmd) {
			fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				b.Fatal(err)
			}
			theirs, ours := os.NewFile(uintptr(fds[0]), "rpc"), os.NewFile(uintptr(fds[1]), "rpc")
			cmd.ExtraFiles = []*os.File{theirs}
			b.Cleanup(func() { theirs.Close() })
			conn, err := net.FileConn(ours)
			ours.Close()
			if err != nil {
				b.Fatal(err)
			}
			client = jsonrpc.NewClient(conn)
		})
		defer client.Close()
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			var v Small
			if err := client.Call("Echo.Echo", smallValue, &v); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// sendOOB is the control data for fds files (os.Stdin, again and again).
func sendOOB(b *testing.B, fds int) []byte {
	if fds == 0 {
		return nil
	}
	oob, err := rights([]*os.File{os.Stdin})
	if err != nil {
		b.Fatal(err)
	}
	return oob
}

// BenchmarkThroughput sends values one way to a child: Small ones (see
// msgs/s) and json.RawMessage of 64 KiB, 1 MiB and 16 MiB (see MB/s).
func BenchmarkThroughput(b *testing.B) {
	sizes := []struct {
		name string
		n    int
	}{{"small", 0}, {"64KiB", 64 << 10}, {"1MiB", 1 << 20}, {"16MiB", 16 << 20}}
	for _, size := range sizes {
		var v any = smallValue
		payload := smallFrame
		if size.n > 0 {
			raw := jsonString(size.n)
			v = raw
			payload = append(binary.LittleEndian.AppendUint64(nil, uint64(len(raw))), raw...)
		}
		b.Run("size="+size.name+"/impl=blocking", func(b *testing.B) {
			c := startBench(b, "bench-raw-sink", nil)
			fd, f := rawSocket(c, true)
			defer f.Close()
			b.SetBytes(int64(len(payload)))
			b.ReportAllocs()
			b.ResetTimer()
			unix.Write(fd, binary.LittleEndian.AppendUint64(nil, uint64(b.N*len(payload))))
			dgram := c.dgram
			for i := 0; i < b.N; i++ {
				for off := 0; off < len(payload); off += dgram {
					if _, err := unix.SendmsgN(fd, payload[off:min(off+dgram, len(payload))], nil, nil, unix.MSG_NOSIGNAL); err != nil {
						b.Fatal(err)
					}
				}
			}
			if _, err := unix.Read(fd, make([]byte, 8)); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
		b.Run("size="+size.name+"/impl=channel", func(b *testing.B) {
			c := startBench(b, "bench-sink", nil, size.name)
			b.SetBytes(int64(len(payload)))
			b.ReportAllocs()
			b.ResetTimer()
			if err := c.Send(b.N); err != nil {
				b.Fatal(err)
			}
			for i := 0; i < b.N; i++ {
				if err := c.Send(v); err != nil {
					b.Fatal(err)
				}
			}
			var n int
			if err := c.Recv(&n); err != nil || n != b.N {
				b.Fatalf("sink received %d, %v; want %d", n, err, b.N)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkSend and BenchmarkRecv count the allocations of one verb, in
// one process, against a raw peer that allocates nothing.
func BenchmarkSend(b *testing.B) {
	c, peer := rawPair(b)
	go func() {
		buf := make([]byte, 1<<16)
		for {
			if n, err := unix.Read(peer, buf); err != nil || n == 0 {
				return
			}
		}
	}()
	b.ReportAllocs()
	b.SetBytes(int64(len(smallFrame)))
	var v any = smallValue // boxed once: the caller's allocation, not Send's
	for i := 0; i < b.N; i++ {
		if err := c.Send(v); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRecv(b *testing.B) {
	c, peer := rawPair(b)
	go func() {
		for {
			if _, err := unix.Write(peer, smallFrame); err != nil {
				return
			}
		}
	}()
	b.ReportAllocs()
	b.SetBytes(int64(len(smallFrame)))
	var v Small
	for i := 0; i < b.N; i++ {
		if err := c.Recv(&v); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUnmarshal is what json.Unmarshal alone costs for the Small
// value: BenchmarkRecv's allocations beyond it are the package's own.
func BenchmarkUnmarshal(b *testing.B) {
	b.ReportAllocs()
	var v Small
	for i := 0; i < b.N; i++ {
		if err := json.Unmarshal(smallFrame[headerLen:], &v); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAdopt measures what a server at a socket path (examples/door)
// pays to make an accepted connection a Conn: File and FileConn duplicate
// the socket twice, and the extra descriptors are closed. The baseline
// accepts and closes; both dial a new connection each time.
func BenchmarkAdopt(b *testing.B) {
	for _, adopt := range []bool{false, true} {
		b.Run(fmt.Sprintf("impl=%s", map[bool]string{false: "accept", true: "accept+adopt"}[adopt]), func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "s")
			l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				d, err := net.Dial("unixpacket", path)
				if err != nil {
					b.Fatal(err)
				}
				uc, err := l.AcceptUnix()
				if err != nil {
					b.Fatal(err)
				}
				if adopt {
					f, err := uc.File()
					if err != nil {
						b.Fatal(err)
					}
					uc.Close()
					c, err := FileConn(f)
					f.Close()
					if err != nil {
						b.Fatal(err)
					}
					c.Close()
				} else {
					uc.Close()
				}
				d.Close()
			}
		})
	}
}

// BenchmarkAnnounced measures what a Conn holds for a message whose header
// announces 64 MiB of which one byte came: heap-MiB is the heap in use
// while the message waits, above what it was before.
func BenchmarkAnnounced(b *testing.B) {
	var held float64
	for i := 0; i < b.N; i++ {
		held += float64(heldForAnnounced(b))
	}
	b.ReportMetric(held/float64(b.N)/(1<<20), "heap-MiB")
}

// BenchmarkLargeValue sends a 64 MiB json.RawMessage through a Pair and
// receives it into a new one each time: time, bytes and allocations.
func BenchmarkLargeValue(b *testing.B) {
	a, c := pair(b)
	v := jsonString(64 << 20)
	b.SetBytes(int64(len(v)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		a.SetDeadline(time.Now().Add(time.Minute))
		c.SetDeadline(time.Now().Add(time.Minute))
		sent := make(chan error, 1)
		go func() { sent <- a.Send(v) }()
		var got json.RawMessage
		if err := c.Recv(&got); err != nil || len(got) != len(v) {
			b.Fatal(err)
		}
		if err := <-sent; err != nil {
			b.Fatal(err)
		}
	}
}
