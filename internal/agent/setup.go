package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/nftguard/nftguard/api/v1alpha1"
	"github.com/nftguard/nftguard/internal/apiretry"
	"github.com/nftguard/nftguard/internal/audit"
	"github.com/nftguard/nftguard/internal/cni"
	"github.com/nftguard/nftguard/internal/cni/install"
	"github.com/nftguard/nftguard/internal/dataplane/nftnl"
	"github.com/nftguard/nftguard/internal/dataplane/render"
)

// Options configures the agent Setup builds.
type Options struct {
	// NodeName is the node whose NodeRuleSet the agent programs (required).
	NodeName string
	// MetricsBindAddress is where the Prometheus metrics endpoint listens;
	// "0" disables it.
	MetricsBindAddress string
	// HealthProbeBindAddress is where /healthz and /readyz listen; "0" or
	// empty disables them.
	HealthProbeBindAddress string
	// Drops configures how the drop log's lines reach the drops API.
	Drops DropsOptions
	// Render sets the NFLOG group and rate limit of the drop log rules
	// (dataplane defaults for zero values); the drop log reads that group.
	Render render.Options
	// AuditLog is the drop log file, or "-" for standard output.
	AuditLog string
	// AuditMaxSize is the size in bytes past which the drop log is rotated,
	// AuditMaxFiles the rotated files kept (audit defaults for zero values).
	AuditMaxSize  int64
	AuditMaxFiles int
	// ResyncPeriod is how often the table is checked for drift and the
	// status counters refreshed (default one minute).
	ResyncPeriod time.Duration
	// KeepEstablished keeps the established connections a rule set change
	// denies (conntrack lets them go on); by default they are revoked.
	KeepEstablished bool
	// RevokedMark is the conntrack mark bit of revoked connections
	// (default DefaultRevokedMark); it must be a bit no other component on
	// the node uses in the conntrack mark. Unused with KeepEstablished.
	RevokedMark uint32
	// NoTamperWatch turns off the nf_tables notification watch that
	// repairs others' changes to the table at once (TamperWatch); drift is
	// then repaired by the resync only.
	NoTamperWatch bool
	// NetNS is a file descriptor of the network namespace whose table the
	// agent programs and whose NFLOG group it reads; 0: the agent's own.
	NetNS int
	// Log is the agent's logger; its parts log under their own names.
	Log logr.Logger
	// Registerer takes the drop log's metrics (nil: the manager's registry).
	Registerer prometheus.Registerer
	// Listen opens the endpoints' listeners (default net.Listen).
	Listen func(network, address string) (net.Listener, error)
	// EndpointRetry and AuditRetry are how long a part that failed waits
	// before it tries again (defaults 5 s).
	EndpointRetry, AuditRetry time.Duration

	// CNI configures the agent's side of the nftguard CNI plugin; an empty
	// Socket runs the agent without it.
	CNI CNIOptions
}

// CNIOptions configures the CNI plugin's side of the agent.
type CNIOptions struct {
	// Socket is where the agent listens for the plugin; empty: no plugin,
	// and pods are not held until they are programmed.
	Socket string
	// StateDir holds the attachment registry (it must survive a reboot).
	StateDir string
	// Namespace is nftguard's own namespace, whose pods are never held.
	Namespace string
	// PodCIDRs are the node's pod ranges when Node.spec.podCIDRs is empty.
	PodCIDRs []string
	// AddWait bounds how long an ADD waits for its pod to be programmed.
	AddWait time.Duration
	// NotReadyWarning and NotReadyRelease bound how long a pod stays not
	// ready (see Attachments).
	NotReadyWarning time.Duration
	NotReadyRelease time.Duration
	// PluginSource, when set, is the plugin binary the agent installs into
	// BinDir, chaining it into ConfDir's configuration and repairing that
	// every InstallInterval; empty: the node's configuration is managed
	// elsewhere.
	PluginSource    string
	ConfDir         string
	BinDir          string
	InstallInterval time.Duration
}

// DropsOptions configures the Pusher that sends the drop log's lines to the
// drops API. An empty TokenFile sends nothing (the file alone has them).
type DropsOptions struct {
	// TokenFile holds a service-account token for the audience
	// dropsapi.Audience, bound to the agent's pod (a projected volume).
	TokenFile string
	// CAFile holds the CA that signs the drops API's serving certificate.
	CAFile string
	// Servers, when set, are the replicas' base URLs; otherwise they are
	// found from the EndpointSlices of Service in Namespace.
	Servers   []string
	Service   string
	Namespace string
	// ServerName is the name the replicas' certificate is verified for
	// (default <Service>.<Namespace>.svc).
	ServerName string
	// Interval is how often lines are pushed (default 1 s).
	Interval time.Duration
}

// recentDrops is how many drop log lines the logger keeps in memory.
const recentDrops = 100

// Agent is a node agent whose parts are wired into one manager: the
// Reconciler programming the node's NodeRuleSet, the drop log, the drops
// endpoint and the health checks. Run starts it.
type Agent struct {
	mgr        ctrl.Manager
	programmer *nftnl.Programmer
	log        logr.Logger
	opts       Options
}

// Setup opens the node's nftables and builds the agent. On error nothing
// it opened stays open; otherwise Run releases it.
func Setup(cfg *rest.Config, opts Options) (*Agent, error) {
	cfg = rest.CopyConfig(cfg)
	apiretry.Tune(cfg)
	if opts.NodeName == "" {
		return nil, errors.New("agent needs a node name")
	}
	if opts.Render.LogGroup == 0 {
		opts.Render.LogGroup = render.DefaultLogGroup
	}
	if opts.RevokedMark == 0 {
		opts.RevokedMark = DefaultRevokedMark
	}
	if opts.KeepEstablished {
		opts.Render.RevokedMark = 0
	} else {
		opts.Render.RevokedMark = opts.RevokedMark
	}
	logger := opts.Log
	scheme, err := v1alpha1.NewScheme()
	if err != nil {
		return nil, fmt.Errorf("building the scheme: %w", err)
	}

	// Seed the cache filter with the groups the node references now, so the
	// first list of AddressGroups keeps only those in memory.
	groups := &GroupFilter{}
	direct, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, fmt.Errorf("creating the API client: %w", err)
	}
	var current v1alpha1.NodeRuleSet
	if err := direct.Get(context.Background(), client.ObjectKey{Name: opts.NodeName}, &current); err == nil {
		groups.SetReferenced(current.Spec.AddressGroups)
	} else if !apierrors.IsNotFound(err) {
		logger.Error(err, "Reading this node's NodeRuleSet; caching every AddressGroup until it is known")
	}
	byObject := map[client.Object]cache.ByObject{
		// Only this node's rule set is watched.
		&v1alpha1.NodeRuleSet{}: {Field: fields.OneTermEqualSelector("metadata.name", opts.NodeName)},
		// Only the groups whose span holds this node's bucket are sent,
		// and of those only the referenced ones keep their members.
		&v1alpha1.AddressGroup{}: {Label: v1alpha1.SpanSelector(opts.NodeName), Transform: groups.Transform},
	}
	if opts.Drops.TokenFile != "" && len(opts.Drops.Servers) == 0 {
		// The drops API's replicas: the slices of one Service in the
		// agent's own namespace.
		byObject[&discoveryv1.EndpointSlice{}] = cache.ByObject{
			Namespaces: map[string]cache.Config{opts.Drops.Namespace: {}},
			Label:      labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: opts.Drops.Service}),
		}
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme: scheme,
		Logger: logger,
		// The agent serves metrics and probes itself (Endpoints): a port
		// taken on the host network must not stop it.
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Cache: cache.Options{
			ByObject: byObject,
			// Watching again within a second of the API server's return.
			NewInformer: apiretry.NewInformer,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("creating the manager: %w", err)
	}

	var programmer *nftnl.Programmer
	if opts.NetNS != 0 {
		programmer, err = nftnl.NewProgrammerInNetNS(opts.NetNS)
	} else {
		programmer, err = nftnl.NewProgrammer()
	}
	if err != nil {
		return nil, fmt.Errorf("opening nftables: %w", err)
	}
	a := &Agent{mgr: mgr, programmer: programmer, log: logger, opts: opts}
	if err := a.wire(groups); err != nil {
		programmer.Close()
		return nil, err
	}
	return a, nil
}

// wire adds the drop log, the drops endpoint, the reconciler and the
// health checks to the manager.
func (a *Agent) wire(groups *GroupFilter) error {
	opts, mgr := a.opts, a.mgr
	resolver := &Resolver{}
	pusher := a.pusher()
	var onLines func([]audit.Event)
	if pusher != nil {
		onLines = pusher.Add
	}
	r := &Reconciler{
		Client:       mgr.GetClient(),
		APIReader:    mgr.GetAPIReader(),
		NodeName:     opts.NodeName,
		Programmer:   a.programmer,
		Render:       opts.Render,
		Resolver:     resolver,
		Groups:       groups,
		ResyncPeriod: opts.ResyncPeriod,
	}
	reg := cmp.Or[prometheus.Registerer](opts.Registerer, metrics.Registry)
	drops, err := audit.New(audit.Config{
		Node:          opts.NodeName,
		Group:         opts.Render.LogGroup,
		NetNS:         opts.NetNS,
		Output:        opts.AuditLog,
		MaxSize:       opts.AuditMaxSize,
		MaxFiles:      opts.AuditMaxFiles,
		RecentSize:    recentDrops,
		Resolver:      resolver,
		Registerer:    reg,
		Log:           a.log.WithName("audit"),
		Retry:         opts.AuditRetry,
		OnReadyChange: r.Wake,
		OnLines:       onLines,
	})
	if err != nil {
		return fmt.Errorf("opening the drop log: %w", err)
	}
	if err := mgr.Add(manager.RunnableFunc(drops.Run)); err != nil {
		return fmt.Errorf("adding the drop log: %w", err)
	}
	r.Counters = drops
	r.Parts = append(r.Parts, auditPart{log: drops, output: opts.AuditLog, group: opts.Render.LogGroup})

	eps := &Endpoints{Listen: opts.Listen, Retry: opts.EndpointRetry, OnChange: r.Wake, Log: a.log.WithName("endpoints")}
	if enabled(opts.MetricsBindAddress) {
		h := promhttp.HandlerFor(metrics.Registry, promhttp.HandlerOpts{})
		eps.Add("metrics", opts.MetricsBindAddress, func(ctx context.Context, ln net.Listener) error { return serveHTTP(ctx, ln, h) })
	}
	if enabled(opts.HealthProbeBindAddress) {
		h := healthHandler()
		eps.Add("health probes", opts.HealthProbeBindAddress, func(ctx context.Context, ln net.Listener) error { return serveHTTP(ctx, ln, h) })
	}
	if pusher != nil {
		pusher.OnChange = r.Wake
		if err := mgr.Add(pusher); err != nil {
			return fmt.Errorf("adding the drops pusher: %w", err)
		}
		r.Parts = append(r.Parts, pusher)
	}
	if len(eps.list) > 0 {
		if err := eps.register(reg); err != nil {
			return fmt.Errorf("registering the endpoints' metrics: %w", err)
		}
		if err := mgr.Add(eps); err != nil {
			return fmt.Errorf("adding the endpoints: %w", err)
		}
		r.Parts = append(r.Parts, eps)
	}
	if !opts.KeepEstablished {
		r.Revoker = MarkRevoker{Conntrack: NetlinkConntrack{NetNS: opts.NetNS}, Mark: opts.RevokedMark}
	}
	if opts.CNI.Socket != "" {
		att, err := a.wireCNI(r)
		if err != nil {
			return err
		}
		r.Attachments = att
		r.PodCIDRs = opts.CNI.PodCIDRs
	}
	if !opts.NoTamperWatch {
		netns := opts.NetNS
		w := &TamperWatch{
			Open: func() (NotificationSource, error) { return nftnl.NewMonitor(netns) },
			Owns: a.programmer.Owns,
			Wake: r.Wake,
			Log:  a.log.WithName("tamper"),
		}
		if err := w.init(reg); err != nil {
			return fmt.Errorf("registering the tamper watch's metrics: %w", err)
		}
		if err := mgr.Add(w); err != nil {
			return fmt.Errorf("adding the tamper watch: %w", err)
		}
	}
	if err := r.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the reconciler: %w", err)
	}
	return nil
}

// pusher builds the drop log's Pusher, nil when it pushes nowhere.
func (a *Agent) pusher() *Pusher {
	o := a.opts.Drops
	if o.TokenFile == "" {
		return nil
	}
	p := &Pusher{
		Node: a.opts.NodeName, TokenFile: o.TokenFile, CAFile: o.CAFile, Interval: o.Interval,
		ServerName: cmp.Or(o.ServerName, o.Service+"."+o.Namespace+".svc"),
		Log:        a.log.WithName("drops"),
	}
	if len(o.Servers) > 0 {
		servers := slices.Clone(o.Servers)
		p.Servers = func() []string { return servers }
	} else {
		ss := &ServiceServers{Reader: a.mgr.GetClient(), Namespace: o.Namespace, Service: o.Service, PortName: "https"}
		p.Servers = ss.Servers
	}
	return p
}

// replayInterval is how often the agent looks for DELs the plugin recorded
// while the socket did not answer.
const replayInterval = 30 * time.Second

// wireCNI opens the attachment registry, listens on the plugin's socket and,
// when the agent installs the plugin itself, keeps it chained.
func (a *Agent) wireCNI(r *Reconciler) (*Attachments, error) {
	o := a.opts.CNI
	logger := a.log.WithName("cni")
	if o.StateDir == "" {
		return nil, errors.New("the CNI plugin needs a state directory")
	}
	reg, err := cni.OpenRegistry(o.StateDir, logger)
	if err != nil {
		return nil, fmt.Errorf("opening the attachment registry: %w", err)
	}
	att := &Attachments{
		Registry: reg, Namespace: o.Namespace, AddWait: o.AddWait,
		NotReadyWarning: o.NotReadyWarning, NotReadyRelease: o.NotReadyRelease,
		Conntrack: NetlinkConntrack{NetNS: a.opts.NetNS},
		Events:    a.mgr.GetEventRecorder("nftguard-agent"),
		Log:       logger,
	}
	att.init()
	// DELs the runtime made while the agent was down go before the first
	// pass, and then every replayInterval for those made while the socket
	// did not answer.
	att.replayDeleted(logr.NewContext(context.Background(), logger), false)
	if err := a.mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		t := time.NewTicker(replayInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
				att.replayDeleted(logr.NewContext(ctx, logger), true)
			}
		}
	})); err != nil {
		return nil, fmt.Errorf("adding the DEL replay: %w", err)
	}
	if o.PluginSource != "" {
		inst := &install.Installer{ConfDir: o.ConfDir, BinDir: o.BinDir, Source: o.PluginSource, Socket: o.Socket,
			StateDir: o.StateDir, Log: logger}
		att.Installer = inst
		interval := cmp.Or(o.InstallInterval, 5*time.Second)
		if err := a.mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
			if a.markedForUninstall(ctx) {
				// An agent that restarts on an uninstalled node must not
				// chain the plugin again, not even until its first pass.
				if err := att.uninstall(); err != nil {
					logger.Error(err, "Removing the CNI plugin for uninstall")
				}
			}
			inst.Watch(ctx, interval, func(res install.Result, err error) {
				if err != nil {
					logger.Error(err, "Chaining the CNI plugin; pods the runtime starts meanwhile stay not ready")
				} else {
					logger.Info("Chained the CNI plugin", "path", res.Path, "binaryChanged", res.BinaryChanged)
				}
				att.poke()
			})
			return nil
		})); err != nil {
			return nil, fmt.Errorf("adding the CNI installer: %w", err)
		}
	}
	srv, err := cni.Listen(o.Socket, att, logger)
	if err != nil {
		return nil, fmt.Errorf("listening for the CNI plugin: %w", err)
	}
	if err := a.mgr.Add(manager.RunnableFunc(srv.Serve)); err != nil {
		return nil, fmt.Errorf("adding the CNI socket: %w", err)
	}
	return att, nil
}

// markedForUninstall reports whether the node's NodeRuleSet carries the
// uninstall annotation, read straight from the API server. When it cannot
// be read, the answer is no: the plugin is chained, and pods are held.
func (a *Agent) markedForUninstall(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rs := &v1alpha1.NodeRuleSet{}
	if err := a.mgr.GetAPIReader().Get(ctx, client.ObjectKey{Name: a.opts.NodeName}, rs); err != nil {
		return false
	}
	_, ok := rs.Annotations[v1alpha1.UninstallAnnotation]
	return ok
}

// Manager is the manager the agent's parts run in.
func (a *Agent) Manager() ctrl.Manager { return a.mgr }

// Run runs the agent until ctx is done, then closes its nftables
// connection. The table stays: isolated pods stay isolated while the agent
// is away. Run is called once.
func (a *Agent) Run(ctx context.Context) error {
	defer a.programmer.Close()
	a.log.Info("Starting agent", "auditLog", a.opts.AuditLog, "nflogGroup", a.opts.Render.LogGroup, "resyncPeriod", a.opts.ResyncPeriod)
	if err := a.mgr.Start(ctx); err != nil && ctx.Err() == nil {
		return fmt.Errorf("running the agent: %w", err)
	}
	a.log.Info("Agent stopped; the nftables table stays in force")
	return nil
}

// enabled reports whether an endpoint address is set ("0" and "" turn it off).
func enabled(address string) bool { return address != "" && address != "0" }
