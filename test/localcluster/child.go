package localcluster

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// childRoleEnv names the helper role a re-executed process plays. The
// harness runs its pod servers and API forwarders as Config.Helper with this
// variable set; MaybeRunChild then runs the role instead of the program.
const childRoleEnv = "NFTGUARD_LOCALCLUSTER_ROLE"

// MaybeRunChild runs a helper role and exits when this process was started
// as one of the cluster's helpers; otherwise it returns at once. Programs
// that start clusters (nftguard-dev, test binaries through TestMain) call it
// first thing.
func MaybeRunChild() {
	role := os.Getenv(childRoleEnv)
	if role == "" {
		return
	}
	args := os.Args[1:]
	if len(args) > 0 && args[0] == role {
		args = args[1:]
	}
	switch role {
	case rolePodServer:
		os.Exit(RunPodServer(args))
	case roleForward:
		os.Exit(runForward(args))
	case roleNode:
		os.Exit(runNode(args))
	default:
		fmt.Fprintf(os.Stderr, "unknown %s %q\n", childRoleEnv, role)
		os.Exit(2)
	}
}

// signalReady tells the harness the process serves (file descriptor 3).
func signalReady() {
	f := os.NewFile(3, "ready")
	if f == nil {
		return
	}
	fmt.Fprintln(f, "ready")
	f.Close()
}

// waitSignal blocks until SIGTERM or SIGINT.
func waitSignal() os.Signal {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, unix.SIGTERM, unix.SIGINT)
	return <-ch
}

type portList []int

func (l *portList) String() string { return fmt.Sprint(*l) }
func (l *portList) Set(s string) error {
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("bad port %q", f)
		}
		*l = append(*l, n)
	}
	return nil
}

// RunPodServer is a pod's workload: started inside the pod's network
// namespace by the namespace-only cluster, and the test-server image's
// command on real nodes. It answers its name ("namespace/pod") on each TCP port (on
// connect) and UDP port (to any datagram), and answers SCTP INITs on its SCTP
// ports with an INIT ACK through raw IP protocol 132 sockets.
func RunPodServer(args []string) int {
	fs := flag.NewFlagSet(rolePodServer, flag.ContinueOnError)
	name := fs.String("name", "", "the pod's namespace/name, answered to every probe")
	var tcp, udp, sctp portList
	fs.Var(&tcp, "tcp", "TCP ports to serve (comma-separated)")
	fs.Var(&udp, "udp", "UDP ports to serve")
	fs.Var(&sctp, "sctp", "SCTP ports to answer")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	logger := log.New(os.Stderr, "", log.LstdFlags|log.Lmicroseconds)
	reply := []byte(*name + "\n")
	var closers []io.Closer
	for _, p := range tcp {
		l, err := net.Listen("tcp", ":"+strconv.Itoa(p))
		if err != nil {
			logger.Printf("listening on TCP %d: %v", p, err)
			return 1
		}
		closers = append(closers, l)
		go func() {
			for {
				conn, err := l.Accept()
				if err != nil {
					return
				}
				logger.Printf("tcp %s -> %s", conn.RemoteAddr(), conn.LocalAddr())
				_ = conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
				_, _ = conn.Write(reply)
				conn.Close()
			}
		}()
	}
	for _, p := range udp {
		pc, err := net.ListenPacket("udp", ":"+strconv.Itoa(p))
		if err != nil {
			logger.Printf("listening on UDP %d: %v", p, err)
			return 1
		}
		closers = append(closers, pc)
		go func() {
			buf := make([]byte, 2048)
			for {
				_, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				logger.Printf("udp %s -> %s", from, pc.LocalAddr())
				_, _ = pc.WriteTo(reply, from)
			}
		}()
	}
	// SCTP is always answered, as by a kernel with SCTP: an INIT ACK on
	// the pod's SCTP ports, an ABORT on any other.
	for _, network := range []string{"ip4:132", "ip6:132"} {
		conn, err := net.ListenIP(network, nil)
		if err != nil {
			logger.Printf("raw %s socket: %v", network, err)
			return 1
		}
		closers = append(closers, conn)
		go serveSCTP(conn, sctp, []byte(*name), logger)
	}
	logger.Printf("%s serving tcp %v udp %v sctp %v", *name, tcp, udp, sctp)
	signalReady()
	sig := waitSignal()
	logger.Printf("stopping on %s", sig)
	for _, c := range closers {
		c.Close()
	}
	return 0
}

// serveSCTP answers INITs: INIT ACK on a served port, ABORT otherwise.
func serveSCTP(conn *net.IPConn, ports portList, name []byte, logger *log.Logger) {
	buf := make([]byte, 65536)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			return
		}
		pkt, err := parseSCTP(buf[:n])
		if err != nil || pkt.ChunkType != chunkInit || pkt.VerificationTag != 0 || pkt.InitiateTag == 0 {
			continue
		}
		var out []byte
		if slices.Contains(ports, int(pkt.DstPort)) {
			out = sctpInitAck(pkt, rand.Uint32()|1, name)
			logger.Printf("sctp INIT %s:%d -> :%d, INIT ACK", from, pkt.SrcPort, pkt.DstPort)
		} else {
			out = sctpAbort(pkt)
			logger.Printf("sctp INIT %s:%d -> :%d, ABORT (port not served)", from, pkt.SrcPort, pkt.DstPort)
		}
		_, _ = conn.WriteTo(out, from)
	}
}

// runForward listens inside a node's network namespace and carries each
// connection to an address in the machine's own namespace (the API server
// on loopback), so that the node's agent needs no route out of its node; or,
// with --dial-netns, listens in its own namespace and connects from another
// (the machine's loopback to a real cluster's API server).
func runForward(args []string) int {
	fs := flag.NewFlagSet(roleForward, flag.ContinueOnError)
	nsPath := fs.String("netns", "", "network namespace to listen in (a path such as /run/netns/<name>); empty: this process's own")
	dialPath := fs.String("dial-netns", "", "network namespace to connect from; empty: this process's own")
	listen := fs.String("listen", "", "address to listen on inside the namespace")
	to := fs.String("to", "", "address to connect to")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	logger := log.New(os.Stderr, "", log.LstdFlags|log.Lmicroseconds)
	var l net.Listener
	listenIn := func() error {
		var err error
		l, err = net.Listen("tcp", *listen)
		return err
	}
	var err error
	if *nsPath == "" {
		err = listenIn()
	} else {
		var fd int
		if fd, err = unix.Open(*nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
			logger.Printf("opening %s: %v", *nsPath, err)
			return 1
		}
		err = inNetNSFd(fd, listenIn)
		unix.Close(fd)
	}
	dialFD := -1
	if *dialPath != "" {
		if dialFD, err = unix.Open(*dialPath, unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
			logger.Printf("opening %s: %v", *dialPath, err)
			return 1
		}
	}
	if err != nil {
		logger.Printf("listening on %s in %s: %v", *listen, *nsPath, err)
		return 1
	}
	logger.Printf("forwarding %s in %s to %s", *listen, *nsPath, *to)
	signalReady()
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				logger.Printf("accept: %v", err)
				time.Sleep(50 * time.Millisecond)
				continue
			}
			go forwardConn(in, *to, dialFD, logger)
		}
	}()
	sig := waitSignal()
	logger.Printf("stopping on %s", sig)
	l.Close()
	return 0
}

func forwardConn(in net.Conn, to string, dialFD int, logger *log.Logger) {
	defer in.Close()
	var out net.Conn
	dial := func() (err error) {
		out, err = net.DialTimeout("tcp", to, 5*time.Second)
		return err
	}
	var err error
	if dialFD < 0 {
		err = dial()
	} else {
		err = inNetNSFd(dialFD, dial)
	}
	if err != nil {
		logger.Printf("connecting to %s: %v", to, err)
		return
	}
	defer out.Close()
	var wg sync.WaitGroup
	wg.Add(2)
	pipe := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}
	go pipe(out, in)
	go pipe(in, out)
	wg.Wait()
}
