//go:build linux

package channel

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestPythonPeer talks to testdata/peer.py, a peer that knows only the
// README's wire format, exchanging values and files both ways.
func TestPythonPeer(t *testing.T) {
	checkFds(t)
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("this test needs python3 on the PATH, to run the cross-language peer testdata/peer.py: %v", err)
	}
	fds, err := socketpair()
	if err != nil {
		t.Fatal(err)
	}
	f0, f1 := os.NewFile(uintptr(fds[0]), "channel"), os.NewFile(uintptr(fds[1]), "channel")
	c, err := FileConn(f0)
	f0.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, "testdata/peer.py")
	cmd.ExtraFiles = []*os.File{f1}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err = cmd.Start()
	f1.Close()
	if err != nil {
		t.Fatal(err)
	}
	waited := false
	defer func() {
		if !waited {
			cmd.Process.Kill()
			cmd.Wait()
		}
		if t.Failed() {
			t.Logf("peer.py stderr:\n%s", stderr.String())
		}
	}()
	c.SetDeadline(time.Now().Add(60 * time.Second))

	// 1. Go -> Python with a pipe that Python writes into.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := c.SendWithFds(map[string]string{"text": "hello from Go, via Python"}, w); err != nil {
		t.Fatalf("SendWithFds() error = %v", err)
	}
	w.Close()
	var echo struct{ Echo map[string]string }
	if err := c.Recv(&echo); err != nil || echo.Echo["text"] != "hello from Go, via Python" {
		t.Fatalf("Recv() = %+v, %v; stderr: %s", echo, err, stderr.String())
	}
	if b, err := io.ReadAll(r); string(b) != "hello from Go, via Python" {
		t.Errorf("pipe read %q, %v; want Python to have written the text", b, err)
	}

	// 2. Python -> Go with a memfd.
	var memfd struct{ Memfd bool }
	fs, err := c.RecvWithFds(&memfd)
	if err != nil || !memfd.Memfd || len(fs) != 1 {
		t.Fatalf("RecvWithFds() = %+v, %d files, %v", memfd, len(fs), err)
	}
	b, err := io.ReadAll(fs[0])
	fs[0].Close()
	if string(b) != "from python" {
		t.Errorf("memfd read %q, %v; want \"from python\"", b, err)
	}

	// 3. A value of several datagrams, Go -> Python.
	big := strings.Repeat("ab", 300000)
	if err := c.Send(big); err != nil {
		t.Fatal(err)
	}
	var sum struct {
		Len    int
		Sha256 string
	}
	h := sha256.Sum256([]byte(big))
	if err := c.Recv(&sum); err != nil || sum.Len != len(big) || sum.Sha256 != hex.EncodeToString(h[:]) {
		t.Fatalf("Recv() = %+v, %v; want the length and hash of %d bytes", sum, err, len(big))
	}

	// 4. A value of several datagrams split Python's way, Python -> Go.
	var s string
	if err := c.Recv(&s); err != nil || s != strings.Repeat("y", 700000) {
		t.Fatalf("Recv() = %d bytes, %v; want 700000 y", len(s), err)
	}

	// 5. Close: Python sees the end of input and exits 0.
	c.Close()
	waited = true
	if err := cmd.Wait(); err != nil {
		t.Fatalf("peer.py: %v", err)
	}
}
