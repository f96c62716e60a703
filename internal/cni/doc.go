// Package cni is the node side of nftguard's chained CNI plugin: the
// protocol the plugin speaks to the local agent over a unix socket (Server
// for the agent, Client for the plugin), and the Registry in which the agent
// keeps the pod attachments it has heard of across restarts. The agent
// implements Handler; this package knows nothing of nftables or the API
// server. See docs/cni-plugin.md.
package cni
