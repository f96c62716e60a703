// Package dropsapi is nftguard's drops API: an aggregated API
// (drops.nftguard.io/v1alpha1) served through the Kubernetes API server, so
// that users read drops with their ordinary credentials from anywhere the
// API server is reachable, and no user credential ever reaches a node.
//
// Agents push their drop log lines to every replica of the server with a
// service-account token bound to the audience Audience (and, through the
// kubelet, to their node). The server names remote peers from one pod
// index and keeps a bounded window of recent lines per node.
//
// Reads arrive only from the API server's front proxy: the server
// authenticates the front-proxy client certificate (the requestheader
// client CA that kube-apiserver publishes in kube-system) and authorizes
// each user with a SubjectAccessReview.
package dropsapi
