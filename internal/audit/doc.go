// Package audit owns the node agent's drop log: it reads the packets the
// dataplane logs to an NFLOG group, decodes their prefix and headers, names
// the pods and policies involved, folds repeats of a flow into one line and
// writes JSON lines (with rotation) and Prometheus metrics. Records it cannot
// deliver are counted in lines of their own, never dropped silently.
package audit
