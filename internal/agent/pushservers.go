package agent

import (
	"context"
	"net"
	"slices"
	"strconv"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// +kubebuilder:rbac:groups=discovery.k8s.io,resources=endpointslices,verbs=get;list;watch,namespace=nftguard-system

// ServiceServers finds the replicas of the drops API from the
// EndpointSlices of its Service: every ready endpoint, at the port named
// PortName (or the only port). The agent watches the slices of that one
// Service in its own namespace, so the watch costs every node the same
// small object whatever the cluster's size.
type ServiceServers struct {
	Reader    client.Reader
	Namespace string
	Service   string
	PortName  string
}

// Servers returns the replicas' base URLs, sorted.
func (s *ServiceServers) Servers() []string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var list discoveryv1.EndpointSliceList
	if err := s.Reader.List(ctx, &list, client.InNamespace(s.Namespace),
		client.MatchingLabels{discoveryv1.LabelServiceName: s.Service}); err != nil {
		return nil
	}
	var out []string
	for _, es := range list.Items {
		port := int32(0)
		for _, p := range es.Ports {
			if p.Port != nil && (p.Name != nil && *p.Name == s.PortName || len(es.Ports) == 1) {
				port = *p.Port
			}
		}
		if port == 0 {
			continue
		}
		for _, ep := range es.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			for _, a := range ep.Addresses {
				out = append(out, "https://"+net.JoinHostPort(a, strconv.Itoa(int(port))))
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
