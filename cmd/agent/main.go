// Command agent is nftguard's node agent: it programs its node's NodeRuleSet
// into the nftables table inet nftguard of the network namespace it runs in,
// reports the outcome in the NodeRuleSet status, and writes the drop log.
package main

import (
	"context"
	"flag"
	"os"
	"time"

	"go.uber.org/zap/zapcore"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/agent"
	"github.com/nftguard/nftguard/internal/audit"
	"github.com/nftguard/nftguard/internal/dataplane/nftnl"
	"github.com/nftguard/nftguard/internal/dataplane/render"
)

func main() {
	os.Exit(run())
}

func run() int {
	var (
		nodeName      string
		metricsAddr   string
		probeAddr     string
		auditLog      string
		auditRate     uint
		auditBurst    uint
		auditMaxSize  int64
		auditMaxFiles int
		nflogGroup    uint
		resync        time.Duration
		dropsAddr     string
		dropsCertDir  string
	)
	flag.StringVar(&nodeName, "node-name", os.Getenv("NODE_NAME"), "Name of the node whose NodeRuleSet this agent programs (default: $NODE_NAME).")
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":9090", "Address the Prometheus metrics endpoint binds to; 0 disables it.")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":9091", "Address the /healthz and /readyz endpoints bind to; 0 disables them.")
	flag.StringVar(&auditLog, "audit-log", "-", "Drop log file (JSON lines), or - for standard output.")
	flag.UintVar(&auditRate, "audit-rate", uint(render.DefaultLogRate), "Packets per second each isolated pod direction may log (in-kernel rate limit).")
	flag.UintVar(&auditBurst, "audit-burst", uint(render.DefaultLogBurst), "Burst of the in-kernel log rate limit, in packets.")
	flag.Int64Var(&auditMaxSize, "audit-max-size", 100<<20, "Size in bytes past which the drop log is rotated.")
	flag.IntVar(&auditMaxFiles, "audit-max-files", 5, "Rotated drop log files kept.")
	flag.UintVar(&nflogGroup, "nflog-group", uint(render.DefaultLogGroup), "NFLOG group the drop log rules use.")
	flag.DurationVar(&resync, "resync-period", time.Minute, "How often the table is checked for drift (and repaired) and status counters refreshed.")
	flag.StringVar(&dropsAddr, "drops-bind-address", ":9092", "Address the drops endpoint (HTTPS, callers authenticated by TokenReview and authorized for get on noderulesets/drops) binds to; 0 disables it.")
	flag.StringVar(&dropsCertDir, "drops-cert-dir", "", "Directory holding tls.crt and tls.key for the drops endpoint; empty: a self-signed certificate.")
	zapOpts := zap.Options{TimeEncoder: zapcore.ISO8601TimeEncoder}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()

	logger := zap.New(zap.UseFlagOptions(&zapOpts)).WithValues("node", nodeName)
	ctrl.SetLogger(logger)
	setupLog := logger.WithName("setup")
	if nodeName == "" {
		setupLog.Error(nil, "No node name: set --node-name or NODE_NAME")
		return 2
	}

	scheme, err := v1alpha1.NewScheme()
	if err != nil {
		setupLog.Error(err, "Building the scheme")
		return 1
	}
	cfg, err := ctrl.GetConfig()
	if err != nil {
		setupLog.Error(err, "Loading kubeconfig")
		return 1
	}
	// Seed the cache filter with the groups the node references now, so the
	// first list of AddressGroups keeps only those in memory.
	groups := &agent.GroupFilter{}
	direct, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		setupLog.Error(err, "Creating API client")
		return 1
	}
	var current v1alpha1.NodeRuleSet
	if err := direct.Get(context.Background(), client.ObjectKey{Name: nodeName}, &current); err == nil {
		groups.SetReferenced(current.Spec.AddressGroups)
	} else if !apierrors.IsNotFound(err) {
		setupLog.Error(err, "Reading this node's NodeRuleSet; caching every AddressGroup until it is known")
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: metricsAddr},
		HealthProbeBindAddress: probeAddr,
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			// Only this node's rule set is watched.
			&v1alpha1.NodeRuleSet{}: {Field: fields.OneTermEqualSelector("metadata.name", nodeName)},
			// Every group is watched, but only referenced ones keep members.
			&v1alpha1.AddressGroup{}: {Transform: groups.Transform},
		}},
	})
	if err != nil {
		setupLog.Error(err, "Creating manager")
		return 1
	}

	programmer, err := nftnl.NewProgrammer()
	if err != nil {
		setupLog.Error(err, "Opening nftables")
		return 1
	}
	defer programmer.Close()

	resolver := &agent.Resolver{Reader: mgr.GetAPIReader()}
	drops, err := audit.New(audit.Config{
		Node:       nodeName,
		Group:      uint16(nflogGroup),
		Output:     auditLog,
		MaxSize:    auditMaxSize,
		MaxFiles:   auditMaxFiles,
		RecentSize: 4096, // lines the drops endpoint can summarize
		Resolver:   resolver,
		Registerer: metrics.Registry,
		Log:        logger.WithName("audit"),
	})
	if err != nil {
		setupLog.Error(err, "Opening the drop log")
		return 1
	}
	if err := mgr.Add(manager.RunnableFunc(drops.Run)); err != nil {
		setupLog.Error(err, "Adding the drop log")
		return 1
	}
	if dropsAddr != "0" {
		cs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			setupLog.Error(err, "Creating the drops endpoint's client")
			return 1
		}
		if err := mgr.Add(&agent.DropsServer{
			BindAddress: dropsAddr, NodeName: nodeName, Lines: drops, CertDir: dropsCertDir,
			TokenReviews:         cs.AuthenticationV1().TokenReviews(),
			SubjectAccessReviews: cs.AuthorizationV1().SubjectAccessReviews(),
			Log:                  logger.WithName("drops"),
		}); err != nil {
			setupLog.Error(err, "Adding the drops endpoint")
			return 1
		}
	}
	r := &agent.Reconciler{
		Client:       mgr.GetClient(),
		APIReader:    mgr.GetAPIReader(),
		NodeName:     nodeName,
		Programmer:   programmer,
		Render:       render.Options{LogGroup: uint16(nflogGroup), LogRate: uint32(auditRate), LogBurst: uint32(auditBurst)},
		Resolver:     resolver,
		Counters:     drops,
		Groups:       groups,
		ResyncPeriod: resync,
	}
	if err := r.SetupWithManager(mgr); err != nil {
		setupLog.Error(err, "Setting up the agent")
		return 1
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		setupLog.Error(err, "Adding health check")
		return 1
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		setupLog.Error(err, "Adding ready check")
		return 1
	}
	setupLog.Info("Starting agent", "auditLog", auditLog, "nflogGroup", nflogGroup, "resyncPeriod", resync)
	ctx := ctrl.SetupSignalHandler()
	if err := mgr.Start(ctx); err != nil && ctx.Err() == nil {
		setupLog.Error(err, "Running agent")
		return 1
	}
	// The table stays: isolated pods stay isolated while the agent is away.
	setupLog.Info("Agent stopped; the nftables table stays in force")
	return 0
}
