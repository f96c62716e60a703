// Package bench holds nftguard's benchmarks: the compiler at scale, nftables
// programming and the data path in throwaway network namespaces, the drop
// log, memory per pod and the controller against a real API server. They run
// with `make bench` (see mk/bench.mk and docs/benchmarks.md); the summary
// sub-package turns their output into the table of targets.
package bench
