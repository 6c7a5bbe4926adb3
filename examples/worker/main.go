// Command worker shows what package channel is for: the program starts
// itself again as a worker process, sends it requests, hands it open files
// it could not open itself, and prints the worker's replies.
//
//	go run ./examples/worker
package main

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"strings"

	"channel"
)

// A request names an operation; its files, if any, travel with it.
type request struct {
	Op   string `json:"op"`
	Text string `json:"text,omitempty"`
}

type reply struct {
	Text  string `json:"text,omitempty"`
	Lines int    `json:"lines,omitempty"`
	Words int    `json:"words,omitempty"`
	Err   string `json:"err,omitempty"`
}

func init() {
	channel.Register("worker", worker)
}

func main() {
	channel.Dispatch() // in the worker: runs worker and exits
	log.SetFlags(0)

	cmd := channel.Command("worker")
	cmd.Stderr = os.Stderr
	c, err := channel.Start(cmd)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("parent %d: started worker %d\n", os.Getpid(), cmd.Process.Pid)

	// 1. A plain request and its reply.
	var r reply
	must(c.Send(request{Op: "upper", Text: "hello, worker"}))
	must(c.Recv(&r))
	fmt.Printf("upper:  %s\n", r.Text)

	// 2. An open file: the worker reads it through the descriptor, without
	// a path, as a sandboxed process would.
	path := filepath.Join(os.TempDir(), "channel-worker-example.txt")
	must(os.WriteFile(path, []byte("one two three\nfour five\nsix\n"), 0o600))
	defer os.Remove(path)
	f, err := os.Open(path)
	must(err)
	must(c.SendWithFds(request{Op: "count"}, f))
	f.Close() // the worker has its own copy
	must(c.Recv(&r))
	fmt.Printf("count:  %d lines, %d words\n", r.Lines, r.Words)

	// 3. A pipe that the worker writes its answer into.
	pr, pw, err := os.Pipe()
	must(err)
	must(c.SendWithFds(request{Op: "hash", Text: "some bytes to hash"}, pw))
	pw.Close()
	answer, err := io.ReadAll(pr) // ends when the worker closes its copy
	must(err)
	pr.Close()
	must(c.Recv(&r)) // the worker's "done"
	fmt.Printf("hash:   %s (through the pipe; reply %q)\n", answer, r.Text)

	// Closing our end is the worker's signal to finish.
	c.Close()
	fmt.Printf("worker: %v\n", exitStatus(cmd.Wait()))
}

// worker runs in the child process, serving requests until the parent
// closes its end.
func worker(c *channel.Conn) error {
	for {
		var req request
		files, err := c.RecvWithFds(&req)
		if err == io.EOF {
			return nil // the parent is done
		}
		if err != nil {
			return err
		}
		rep := serve(req, files)
		for _, f := range files {
			f.Close()
		}
		if err := c.Send(rep); err != nil {
			return err
		}
	}
}

func serve(req request, files []*os.File) reply {
	switch {
	case req.Op == "upper":
		return reply{Text: strings.ToUpper(req.Text)}
	case req.Op == "count" && len(files) == 1:
		var r reply
		sc := bufio.NewScanner(files[0])
		for sc.Scan() {
			r.Lines++
			r.Words += len(strings.Fields(sc.Text()))
		}
		return r
	case req.Op == "hash" && len(files) == 1:
		fmt.Fprintf(files[0], "%x", sha256.Sum256([]byte(req.Text)))
		return reply{Text: "done"}
	}
	return reply{Err: fmt.Sprintf("bad request %q with %d files", req.Op, len(files))}
}

func exitStatus(err error) string {
	if err == nil {
		return "exited 0"
	}
	return err.Error()
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
