package dropsapi

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch,resourceNames=extension-apiserver-authentication

// Options configures the drops API that Setup adds to a manager.
type Options struct {
	// BindAddress is where it serves HTTPS (the Service's target port).
	BindAddress string
	// CertDir, when set, holds tls.crt and tls.key issued elsewhere;
	// otherwise a CertManager keeps them in Secret and publishes the CA.
	CertDir string
	// Namespace is nftguard's namespace; Service, Secret and ConfigMap its
	// objects there.
	Namespace, Service, Secret, ConfigMap string
	// AgentServiceAccount is the agents' service account in Namespace.
	AgentServiceAccount string
	// Store bounds the lines held; MaxPolicyLabels the metric's policies.
	Store           StoreConfig
	MaxPolicyLabels int
	// Events, when enabled, records Events on the policies that dropped
	// or audited packets (on the leader, rate limited).
	Events EventOptions
	Log    logr.Logger
}

// EventOptions configures the Events on policies that dropped traffic:
// off by default, at most Max per Interval across the cluster.
type EventOptions struct {
	Enabled  bool
	Interval time.Duration
	Max      int
}

// Setup adds the drops API to mgr: the server, on every replica (it needs
// no leadership: every agent pushes to every replica), its certificate,
// and the pod index, fed by the manager's pod informer. It returns the
// store, whose counts the leader writes into DefaultDeny status.
func Setup(mgr ctrl.Manager, cfg *rest.Config, o Options) (*Store, error) {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	m, err := NewMetrics(metrics.Registry, o.MaxPolicyLabels)
	if err != nil {
		return nil, fmt.Errorf("drops API metrics: %w", err)
	}
	index := NewPodIndex()
	inf, err := mgr.GetCache().GetInformer(context.Background(), &corev1.Pod{})
	if err != nil {
		return nil, fmt.Errorf("drops API pod index: %w", err)
	}
	if _, err := inf.AddEventHandler(index); err != nil {
		return nil, fmt.Errorf("drops API pod index: %w", err)
	}
	sc := o.Store
	sc.Namer, sc.Metrics = index, m
	store := NewStore(sc)
	srv, err := NewServer(ServerConfig{
		Store: store, Client: cs, Metrics: m, Log: o.Log,
		AgentUsername: "system:serviceaccount:" + o.Namespace + ":" + o.AgentServiceAccount,
	})
	if err != nil {
		return nil, err
	}
	var cert func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	if o.CertDir != "" {
		cert = (&FileCertificate{Dir: o.CertDir}).GetCertificate
	} else {
		dyn, err := dynamic.NewForConfig(cfg)
		if err != nil {
			return nil, err
		}
		cm := &CertManager{Client: cs, Dynamic: dyn, Namespace: o.Namespace, Service: o.Service,
			Secret: o.Secret, ConfigMap: o.ConfigMap, Log: o.Log.WithName("certificate")}
		if err := mgr.Add(everyReplica(cm.Start)); err != nil {
			return nil, err
		}
		cert = cm.GetCertificate
	}
	if err := mgr.Add(everyReplica(func(ctx context.Context) error {
		return serve(ctx, srv, o.BindAddress, cert, o.Log)
	})); err != nil {
		return nil, err
	}
	if o.Events.Enabled {
		instance, _ := os.Hostname()
		if err := mgr.Add(&PolicyEvents{Store: store, Client: mgr.GetClient(), Events: cs.EventsV1(), Instance: instance,
			Interval: o.Events.Interval, Max: o.Events.Max, Log: o.Log.WithName("events")}); err != nil {
			return nil, err
		}
	}
	return store, nil
}

// serve loads the front-proxy configuration and serves, retrying what
// fails every 5 s: the drops API being down must not stop the controller.
func serve(ctx context.Context, srv *Server, addr string, cert func(*tls.ClientHelloInfo) (*tls.Certificate, error), log logr.Logger) error {
	started := false
	for ctx.Err() == nil {
		if !started {
			if err := srv.Start(ctx); err != nil {
				log.Error(err, "Cannot start the drops API; retrying")
				sleep(ctx, 5*time.Second)
				continue
			}
			started = true
		}
		ln, err := net.Listen("tcp", addr)
		if err == nil {
			log.Info("Serving the drops API", "address", ln.Addr().String())
			err = srv.Serve(ctx, ln, cert)
		}
		if ctx.Err() == nil {
			log.Error(err, "Serving the drops API failed; retrying", "address", addr)
			sleep(ctx, 5*time.Second)
		}
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

type everyReplica func(context.Context) error

func (f everyReplica) Start(ctx context.Context) error { return f(ctx) }

// NeedLeaderElection implements manager.LeaderElectionRunnable.
func (everyReplica) NeedLeaderElection() bool { return false }

var _ manager.LeaderElectionRunnable = everyReplica(nil)
