// Command agent is nftguard's node agent: it programs its node's NodeRuleSet
// into the nftables table inet nftguard of the network namespace it runs in,
// reports the outcome in the NodeRuleSet status, and writes the drop log.
package main

import (
	"flag"
	"fmt"
	"math/bits"
	"os"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap/zapcore"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/nftguard/nftguard/internal/agent"
	"github.com/nftguard/nftguard/internal/apiretry"
	"github.com/nftguard/nftguard/internal/audit"
	"github.com/nftguard/nftguard/internal/cni"
	"github.com/nftguard/nftguard/internal/cni/install"
	"github.com/nftguard/nftguard/internal/dataplane/render"
	"github.com/nftguard/nftguard/internal/dropsapi/wire"
	"github.com/nftguard/nftguard/internal/ownns"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "follow-drop-log" {
		os.Exit(followDropLog(os.Args[2:]))
	}
	os.Exit(run())
}

// followDropLog is the DaemonSet's drop-log container: it copies the drop
// log file to its standard output, across rotations, so that `kubectl logs
// <agent pod> -c drop-log` shows the drops (the image has no shell or tail).
func followDropLog(args []string) int {
	fs := flag.NewFlagSet("follow-drop-log", flag.ContinueOnError)
	path := fs.String("file", "/var/log/nftguard/drops.log", "Drop log file to follow.")
	poll := fs.Duration("poll", 250*time.Millisecond, "How often to look for new lines.")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := audit.Follow(ctrl.SetupSignalHandler(), *path, os.Stdout, *poll); err != nil {
		fmt.Fprintf(os.Stderr, "following %s: %v\n", *path, err)
		return 1
	}
	return 0
}

func run() int {
	var (
		opts       agent.Options
		auditRate  uint
		auditBurst uint
		nflogGroup uint
		podCIDRs   string
	)
	flag.StringVar(&opts.NodeName, "node-name", os.Getenv("NODE_NAME"), "Name of the node whose NodeRuleSet this agent programs (default: $NODE_NAME).")
	flag.StringVar(&opts.MetricsBindAddress, "metrics-bind-address", ":9090", "Address the Prometheus metrics endpoint binds to; 0 disables it.")
	flag.StringVar(&opts.HealthProbeBindAddress, "health-probe-bind-address", ":9091", "Address the /healthz and /readyz endpoints bind to; 0 disables them.")
	flag.StringVar(&opts.AuditLog, "audit-log", "-", "Drop log file (JSON lines), or - for standard output.")
	flag.UintVar(&auditRate, "audit-rate", uint(render.DefaultLogRate), "Packets per second each isolated pod direction may log (in-kernel rate limit).")
	flag.UintVar(&auditBurst, "audit-burst", uint(render.DefaultLogBurst), "Burst of the in-kernel log rate limit, in packets.")
	flag.Int64Var(&opts.AuditMaxSize, "audit-max-size", 100<<20, "Size in bytes past which the drop log is rotated.")
	flag.IntVar(&opts.AuditMaxFiles, "audit-max-files", 5, "Rotated drop log files kept.")
	flag.UintVar(&nflogGroup, "nflog-group", uint(render.DefaultLogGroup), "NFLOG group the drop log rules use.")
	flag.DurationVar(&opts.ResyncPeriod, "resync-period", time.Minute, "How often the table is checked for drift (and repaired) and status counters refreshed; a backstop for the watch of nf_tables notifications.")
	flag.BoolVar(&opts.KeepEstablished, "keep-established", false, "Keep established connections that a rule set change denies (conntrack lets them go on); by default they are revoked at once.")
	revokedMark := flag.String("revoked-ct-mark", fmt.Sprintf("%#08x", agent.DefaultRevokedMark), "Conntrack mark bit the agent sets on revoked connections (their packets are dropped); pick one no other component on the node uses in the conntrack mark. Only this bit is ever written.")
	identities := flag.Bool("identity-layout", false, "Render every isolated pod direction in the identity layout, where a new connection walks the same few rules however many policies select its pod, but each change of a peer's identity makes the kernel validate every identity of the node (docs/dataplane.md); false: see --identity-layout-min.")
	identityMin := flag.Int("identity-layout-min", render.DefaultIdentityMin, "Without --identity-layout, render in the identity layout the isolated pod directions that reference at least this many rules, and a rule chain per rule for the others, so that a new connection walks fewer than about twice as many rules whatever the policies; 0: rule chains only.")
	watch := flag.Bool("watch-table", true, "Watch nf_tables change notifications and repair another process's changes to the table at once; false: the resync alone repairs them.")
	flag.StringVar(&opts.Drops.TokenFile, "drops-token-file", "", "Service-account token for the audience "+wire.Audience+", bound to this agent's pod (a projected volume), with which the drop log's lines are pushed to the drops API; empty: lines go to the file only.")
	flag.StringVar(&opts.Drops.CAFile, "drops-ca-file", "/var/run/nftguard/drops-ca/ca.crt", "CA bundle the drops API's serving certificate is verified with.")
	flag.StringVar(&opts.Drops.Service, "drops-service", "nftguard-drops", "Service (in --namespace) whose ready endpoints are the drops API's replicas; every replica receives every line.")
	dropsServers := flag.String("drops-server", "", "Comma-separated base URLs of the drops API's replicas (https://host:port), instead of finding them from --drops-service.")
	flag.StringVar(&opts.Drops.ServerName, "drops-server-name", "", "Name the drops API's certificate is verified for (default <drops-service>.<namespace>.svc).")
	flag.DurationVar(&opts.Drops.Interval, "drops-push-interval", time.Second, "How often the drop log's new lines are pushed (sooner when many wait).")
	flag.StringVar(&opts.CNI.Socket, "cni-socket", "", "Unix socket the nftguard CNI plugin reaches the agent on (the plugin's default: "+cni.DefaultSocket+"); empty: run without the plugin, and new pods are not held until programmed.")
	flag.StringVar(&opts.CNI.StateDir, "cni-state-dir", "/var/lib/nftguard/cni", "Directory of the CNI attachment registry; it must survive a reboot.")
	flag.StringVar(&opts.CNI.Namespace, "namespace", ownns.Namespace(), "nftguard's own namespace, whose pods are never held (default: $POD_NAMESPACE, else the service account's).")
	flag.StringVar(&podCIDRs, "pod-cidrs", "", "Comma-separated pod ranges of this node, used when Node.spec.podCIDRs is empty.")
	flag.DurationVar(&opts.CNI.AddWait, "cni-add-wait", 3*time.Second, "How long a CNI ADD waits for its pod to be programmed before the pod starts anyway (held until programmed).")
	flag.DurationVar(&opts.CNI.NotReadyWarning, "not-ready-warning", 30*time.Second, "How long a pod may stay not ready (its traffic dropped) before the agent records a NotReady Event on it; 0: never.")
	flag.DurationVar(&opts.CNI.NotReadyRelease, "not-ready-release", 0, "How long a pod may stay not ready before its traffic passes without its policies (fail open); 0: never, it stays closed.")
	flag.StringVar(&opts.CNI.PluginSource, "cni-plugin-source", "", "The nftguard CNI plugin binary to install and chain (the agent image's /nftguard); empty: the node's CNI configuration is managed elsewhere.")
	flag.StringVar(&opts.CNI.ConfDir, "cni-conf-dir", install.DefaultConfDir, "The container runtime's CNI configuration directory.")
	flag.StringVar(&opts.CNI.BinDir, "cni-bin-dir", install.DefaultBinDir, "The container runtime's CNI plugin directory.")
	flag.DurationVar(&opts.CNI.InstallInterval, "cni-install-interval", 5*time.Second, "How often the plugin's binary and conflist entry are checked and repaired.")
	zapOpts := zap.Options{TimeEncoder: zapcore.ISO8601TimeEncoder}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()
	opts.NoTamperWatch = !*watch

	logger := zap.New(zap.UseFlagOptions(&zapOpts)).WithValues("node", opts.NodeName)
	ctrl.SetLogger(logger)
	setupLog := logger.WithName("setup")
	if opts.NodeName == "" {
		setupLog.Error(nil, "No node name: set --node-name or NODE_NAME")
		return 2
	}
	opts.Render = render.Options{LogGroup: uint16(nflogGroup), LogRate: uint32(auditRate), LogBurst: uint32(auditBurst), Identities: *identities, IdentityMin: *identityMin}
	mark, err := strconv.ParseUint(*revokedMark, 0, 32)
	if err != nil || bits.OnesCount64(mark) != 1 {
		setupLog.Error(err, "--revoked-ct-mark must be one bit of the 32-bit conntrack mark, such as 0x00800000", "value", *revokedMark)
		return 2
	}
	opts.RevokedMark = uint32(mark)
	opts.Log = logger
	opts.Drops.Namespace = opts.CNI.Namespace
	if *dropsServers != "" {
		opts.Drops.Servers = strings.Split(*dropsServers, ",")
	}
	if podCIDRs != "" {
		opts.CNI.PodCIDRs = strings.Split(podCIDRs, ",")
	}

	// Dead connections to the API server fail in seconds, not minutes.
	apiretry.SetHTTP2HealthCheck()
	cfg, err := ctrl.GetConfig()
	if err != nil {
		setupLog.Error(err, "Loading kubeconfig")
		return 1
	}
	a, err := agent.Setup(cfg, opts)
	if err != nil {
		setupLog.Error(err, "Setting up the agent")
		return 1
	}
	if err := a.Run(ctrl.SetupSignalHandler()); err != nil {
		setupLog.Error(err, "Running the agent")
		return 1
	}
	return 0
}
