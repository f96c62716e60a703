// Command kubectl-nftguard is a kubectl plugin for nftguard: whether policies
// are enforced (status), why a connection passes or is dropped (explain), what
// was dropped recently (drops), and removing every node's table (uninstall).
// Install it on the PATH and run `kubectl nftguard`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], streams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr}, nil)
	stop()
	os.Exit(code)
}
