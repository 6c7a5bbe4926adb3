//go:build linux

package channel_test

import (
	"fmt"
	"io"
	"os"
	"strings"

	"channel"
)

func init() {
	// In a program this sits in an init function of package main, and
	// main begins with channel.Dispatch(); here TestMain calls Dispatch.
	channel.Register("example-upper", func(c *channel.Conn) error {
		var s string
		if err := c.Recv(&s); err != nil {
			return err
		}
		return c.Send(strings.ToUpper(s))
	})
}

func ExamplePair() {
	a, b, err := channel.Pair()
	if err != nil {
		panic(err)
	}
	defer a.Close()
	defer b.Close()

	type point struct{ X, Y int }
	if err := a.Send(point{1, 2}); err != nil {
		panic(err)
	}
	var p point
	if err := b.Recv(&p); err != nil {
		panic(err)
	}
	fmt.Printf("%+v\n", p)
	// Output: {X:1 Y:2}
}

func ExampleConn_SendWithFds() {
	a, b, err := channel.Pair()
	if err != nil {
		panic(err)
	}
	defer a.Close()
	defer b.Close()

	// Pass the write end of a pipe; the receiver answers through it.
	r, w, err := os.Pipe()
	if err != nil {
		panic(err)
	}
	defer r.Close()
	if err := a.SendWithFds("write your answer here", w); err != nil {
		panic(err)
	}
	w.Close() // the receiver has its own copy now

	var s string
	files, err := b.RecvWithFds(&s)
	if err != nil {
		panic(err)
	}
	fmt.Fprintf(files[0], "got %q with %d file", s, len(files))
	files[0].Close()

	answer, _ := io.ReadAll(r)
	fmt.Println(string(answer))
	// Output: got "write your answer here" with 1 file
}

func ExampleStart() {
	// Runs this program again as the child registered as "example-upper".
	cmd := channel.Command("example-upper")
	cmd.Stderr = os.Stderr
	c, err := channel.Start(cmd)
	if err != nil {
		panic(err)
	}

	if err := c.Send("hello from the parent"); err != nil {
		panic(err)
	}
	var reply string
	if err := c.Recv(&reply); err != nil {
		panic(err)
	}
	fmt.Println(reply)
	c.Close() // first: a child serving requests returns at io.EOF
	fmt.Println(cmd.Wait())
	// Output:
	// HELLO FROM THE PARENT
	// <nil>
}
