// Command testserver is the workload of the real-node local cluster's test
// pods: it answers its name on its TCP and UDP ports and SCTP INITs through a
// raw protocol-132 socket (the kernel has no SCTP sockets; the container needs
// CAP_NET_RAW).
//
//	testserver --name x/a --tcp 80,81 --udp 80,81 --sctp 80,81
//
// The image has no shell, so it is also the client that `kubectl exec` runs:
//
//	testserver connect [--udp] [--timeout 2s] HOST:PORT
//
// resolves HOST through the pod's resolver (cluster DNS), connects, and
// prints the name the server answered; it exits 1 when nothing answered.
//
//	testserver resolve [--timeout 2s] NAME
//
// prints NAME's addresses from the pod's resolver, or exits 1.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/nftguard/nftguard/test/localcluster"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "connect":
			os.Exit(connect(os.Args[2:]))
		case "resolve":
			os.Exit(resolve(os.Args[2:]))
		}
	}
	os.Exit(localcluster.RunPodServer(os.Args[1:]))
}

func connect(args []string) int {
	fs := flag.NewFlagSet("connect", flag.ContinueOnError)
	udp := fs.Bool("udp", false, "send a datagram instead of connecting over TCP")
	timeout := fs.Duration("timeout", 2*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil || fs.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: testserver connect [--udp] [--timeout D] HOST:PORT")
		return 2
	}
	network := "tcp"
	if *udp {
		network = "udp"
	}
	conn, err := net.DialTimeout(network, fs.Arg(0), *timeout)
	if err != nil {
		fmt.Fprintf(os.Stderr, "connect %s %s: %v\n", network, fs.Arg(0), err)
		return 1
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(*timeout))
	if *udp {
		if _, err := conn.Write([]byte("probe\n")); err != nil {
			fmt.Fprintf(os.Stderr, "send to %s: %v\n", fs.Arg(0), err)
			return 1
		}
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		fmt.Fprintf(os.Stderr, "read from %s (%s): %v\n", fs.Arg(0), conn.RemoteAddr(), err)
		return 1
	}
	fmt.Println(strings.TrimSpace(line))
	return 0
}

func resolve(args []string) int {
	fs := flag.NewFlagSet("resolve", flag.ContinueOnError)
	timeout := fs.Duration("timeout", 2*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil || fs.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: testserver resolve [--timeout D] NAME")
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupHost(ctx, fs.Arg(0))
	if err != nil {
		fmt.Fprintf(os.Stderr, "resolve %s: %v\n", fs.Arg(0), err)
		return 1
	}
	fmt.Println(strings.Join(addrs, " "))
	return 0
}
