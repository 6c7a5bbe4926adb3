//go:build linux

// Command upper is the README's example, whole: a parent that starts itself
// again as a child, sends it a string and prints the child's answer.
package main

import (
	"context"
	"fmt"
	"log"
	"strings"
	"time"

	"channel"
)

func init() {
	channel.Register("upper", func(c *channel.Conn) error {
		var s string
		if err := c.Recv(&s); err != nil {
			return err
		}
		return c.Send(strings.ToUpper(s))
	})
}

func main() {
	channel.Dispatch() // in the child: runs "upper" and exits

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := channel.CommandContext(ctx, "upper") // the child's stdout and stderr are ours
	c, err := channel.Start(cmd)
	if err != nil {
		log.Fatal(err)
	}
	if err := c.Send("hello"); err != nil {
		log.Fatal(err)
	}
	var reply string
	if err := c.Recv(&reply); err != nil {
		log.Fatal(err) // io.EOF: the child is gone; cmd.Wait says why
	}
	fmt.Println(reply) // HELLO
	c.Close()          // first Close: a child still in Recv gets io.EOF
	if err := cmd.Wait(); err != nil {
		log.Fatal(err)
	}
}
