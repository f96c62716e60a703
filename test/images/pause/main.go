// Command pause is the sandbox ("pause") container of the real-node local
// cluster: it holds a pod's namespaces, reaps the zombies that end up as its
// children (it is PID 1 of a pod that shares its PID namespace) and exits on
// SIGINT or SIGTERM. Upstream's pause is C; this one is a static Go binary so
// that the image builds from this repository like every other.
package main

import (
	"fmt"
	"os"
	"os/signal"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		fmt.Println("pause (nftguard local cluster)")
		return
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "warning: pause should be PID 1")
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM, unix.SIGCHLD)
	for sig := range sigs {
		if sig != unix.SIGCHLD {
			fmt.Fprintf(os.Stderr, "shutting down, got signal %s\n", sig)
			os.Exit(0)
		}
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
