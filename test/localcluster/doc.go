// Package localcluster runs nftguard for real on one machine without a
// container runtime: a real etcd and kube-apiserver on loopback, nodes and
// pods as network namespaces joined by veth pairs and routes, the controller
// as a process and one agent per node inside its node's namespace. It
// registers the Node, Namespace and Pod objects a kubelet would, serves each
// pod's declared ports from inside the pod's namespace, and probes TCP, UDP
// and SCTP reachability between pods with real packets.
//
// Every long-lived part is a separate process recorded, with every network
// namespace, in a state file, so that a cluster can outlive the process that
// started it (cmd/nftguard-dev) and can be torn down from the state file
// after a crash. Nothing is added to the machine's own network namespace.
package localcluster
