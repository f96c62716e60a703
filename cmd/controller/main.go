// Command controller is nftguard's central controller: it compiles
// NetworkPolicies and DefaultDenies into one NodeRuleSet per node and the
// AddressGroups they share, and aggregates the agents' status.
package main

import (
	"flag"
	"os"
	"time"

	"go.uber.org/zap/zapcore"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/apiretry"
	"github.com/nftguard/nftguard/internal/compiler"
	"github.com/nftguard/nftguard/internal/controller"
	"github.com/nftguard/nftguard/internal/dropsapi"
	"github.com/nftguard/nftguard/internal/ownns"
)

func main() {
	os.Exit(run())
}

func run() int {
	var (
		metricsAddr    string
		probeAddr      string
		leaderElect    bool
		leaderElectNS  string
		leaseDuration  time.Duration
		renewDeadline  time.Duration
		retryPeriod    time.Duration
		maxObjectBytes int
		maxGroupSize   int
		namespace      string
		drops          dropsapi.Options
	)
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8080", "Address the Prometheus metrics endpoint binds to; 0 disables it.")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "Address the /healthz and /readyz endpoints bind to.")
	flag.BoolVar(&leaderElect, "leader-elect", false, "Elect a leader so that only one replica writes at a time.")
	flag.StringVar(&leaderElectNS, "leader-election-namespace", "", "Namespace of the leader-election Lease (default: the pod's namespace).")
	flag.DurationVar(&leaseDuration, "leader-elect-lease-duration", 60*time.Second, "How long a Lease holds without renewal: the longest a dead leader's replica waits before another takes over.")
	flag.DurationVar(&renewDeadline, "leader-elect-renew-deadline", 45*time.Second, "How long the leader keeps trying to renew before it gives up leadership (and exits): an API server outage shorter than this costs nothing.")
	flag.DurationVar(&retryPeriod, "leader-elect-retry-period", 2*time.Second, "Pause between attempts to acquire or renew the Lease.")
	flag.IntVar(&maxObjectBytes, "max-object-bytes", controller.DefaultMaxObjectBytes, "Largest NodeRuleSet or AddressGroup spec written, in bytes.")
	flag.IntVar(&maxGroupSize, "max-group-entries", compiler.DefaultMaxGroupEntries, "Most addresses (or endpoints) in one AddressGroup object; a larger group is split into shards.")
	flag.StringVar(&namespace, "namespace", ownns.Namespace(), "nftguard's own namespace (default: the pod's). No DefaultDeny or NetworkPolicy isolates its pods, so that no policy can cut the controller off the API server.")
	flag.StringVar(&drops.BindAddress, "drops-bind-address", ":8443", "Address the drops API (an aggregated API, reached through the Kubernetes API server; agents push to it) serves HTTPS on; 0 disables it.")
	flag.StringVar(&drops.CertDir, "drops-cert-dir", "", "Directory holding tls.crt and tls.key for the drops API, issued by another tool; empty: the controller keeps a CA and certificate in the Secret --drops-secret and publishes the CA in the APIService and the ConfigMap --drops-ca-configmap.")
	flag.StringVar(&drops.Service, "drops-service", "nftguard-drops", "The drops API's Service in --namespace (its certificate is for <service>.<namespace>.svc).")
	flag.StringVar(&drops.Secret, "drops-secret", "nftguard-drops-tls", "Secret in --namespace holding the drops API's CA and certificate.")
	flag.StringVar(&drops.ConfigMap, "drops-ca-configmap", "nftguard-drops-ca", "ConfigMap in --namespace where the drops API's CA is published for the agents.")
	flag.StringVar(&drops.AgentServiceAccount, "agent-service-account", "nftguard-agent", "The agents' service account in --namespace: only its tokens, bound to a pod on a node, may push that node's drops.")
	flag.IntVar(&drops.Store.PerNode, "drops-lines-per-node", 4096, "Most recent drop log lines the drops API holds per node.")
	flag.IntVar(&drops.Store.Total, "drops-lines-total", 1<<18, "Most drop log lines the drops API holds in all (about 400 bytes each); past it the nodes holding the most lose their oldest.")
	flag.IntVar(&drops.MaxPolicyLabels, "drops-max-policy-labels", dropsapi.DefaultMaxPolicyLabels, "Most distinct policy values of nftguard_drops_total; later policies are labelled other.")
	flag.BoolVar(&drops.Events.Enabled, "drop-events", false, "Record Events on the NetworkPolicies and DefaultDenies whose isolation dropped or audited packets: at most one per policy per --drop-events-interval, at most --drop-events-max per interval in the cluster (each one an API write).")
	flag.DurationVar(&drops.Events.Interval, "drop-events-interval", dropsapi.DefaultEventInterval, "With --drop-events, how often each policy's drops are summed into an Event.")
	flag.IntVar(&drops.Events.Max, "drop-events-max", dropsapi.DefaultEventMax, "With --drop-events, the most Events per interval; the policies with the most packets go first, the rest wait for a later interval.")
	zapOpts := zap.Options{Development: false, TimeEncoder: zapcore.ISO8601TimeEncoder}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()

	logger := zap.New(zap.UseFlagOptions(&zapOpts))
	ctrl.SetLogger(logger)
	setupLog := logger.WithName("setup")

	scheme, err := v1alpha1.NewScheme()
	if err != nil {
		setupLog.Error(err, "Building the scheme")
		return 1
	}
	if leaderElect && !(retryPeriod < renewDeadline && renewDeadline < leaseDuration) {
		setupLog.Error(nil, "Leader election needs retry period < renew deadline < lease duration",
			"retryPeriod", retryPeriod, "renewDeadline", renewDeadline, "leaseDuration", leaseDuration)
		return 2
	}
	// Dead connections to the API server fail in seconds, not minutes.
	apiretry.SetHTTP2HealthCheck()
	cfg, err := ctrl.GetConfig()
	if err != nil {
		setupLog.Error(err, "Loading kubeconfig")
		return 1
	}
	apiretry.Tune(cfg)
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                        scheme,
		Metrics:                       metricsserver.Options{BindAddress: metricsAddr},
		HealthProbeBindAddress:        probeAddr,
		LeaderElection:                leaderElect,
		LeaderElectionID:              "nftguard-controller.nftguard.io",
		LeaderElectionNamespace:       leaderElectNS,
		LeaderElectionReleaseOnCancel: true,
		LeaseDuration:                 &leaseDuration,
		RenewDeadline:                 &renewDeadline,
		RetryPeriod:                   &retryPeriod,
		// Watching again within a second of the API server's return, and
		// pods cached slim.
		Cache: controller.CacheOptions(),
	})
	if err != nil {
		setupLog.Error(err, "Creating manager")
		return 1
	}
	// The drops API runs on every replica; its counts go into DefaultDeny
	// status, which the leader writes.
	var dropCounts controller.DropCounter
	if drops.BindAddress != "0" && drops.BindAddress != "" {
		drops.Namespace, drops.Log = namespace, logger.WithName("drops")
		store, err := dropsapi.Setup(mgr, cfg, drops)
		if err != nil {
			setupLog.Error(err, "Setting up the drops API")
			return 1
		}
		dropCounts = store.PolicyCounts
	}
	if err := controller.Setup(mgr, controller.Options{MaxObjectBytes: maxObjectBytes, MaxGroupEntries: maxGroupSize,
		ExemptNamespaces: []string{namespace}, DropCounts: dropCounts}); err != nil {
		setupLog.Error(err, "Setting up controllers")
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
	setupLog.Info("Starting controller", "leaderElect", leaderElect, "exemptNamespace", namespace)
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		setupLog.Error(err, "Running manager")
		return 1
	}
	setupLog.Info("Controller stopped")
	return 0
}
