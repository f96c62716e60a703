##@ Benchmarks

# make bench runs every benchmark of test/bench (see docs/benchmarks.md) and
# prints the Go benchmark lines (benchstat-compatible, with the machine as
# config lines) followed by the table of targets; the whole output is also
# kept in BENCH_OUT. The kernel benchmarks need root (they are skipped
# without it). Knobs:
#   BENCH=Datapath           run only the benchmarks matching this -bench pattern
#   BENCH_TIERS="10k 100k"   compiler tiers (or pods/namespaces/policies)
#   BENCH_ARGS="-bench.path.rounds=5 -bench.cp.pods=20000"   scale flags
#   BENCH_COUNT=1            repetitions of each benchmark (-count)
BENCH ?=
BENCH_TIERS ?= 10k 100k
BENCH_ARGS ?=
BENCH_COUNT ?= 1
BENCH_OUT ?= $(BIN)/bench.txt
BENCH_TEST := $(BIN)/bench.test
BENCH_RUN = (cd test/bench && $(BENCH_TEST) -test.run '^$$' -test.benchtime 1x -test.count $(BENCH_COUNT)
BENCH_TIERED := ^Benchmark(Compile|EnginePodEvent|ControllerMemory)$$
BENCH_ONCE := ^Benchmark(Program|Datapath|AuditLog|AgentMemory|ControlPlane|EndToEnd|EndToEndRealNodes|AddToReady|Revoke|DropsNaming|DropsQuery|RuleCount|ProgramRatios|WatchFanout)$$

# The data path benchmark loads its iptables-style comparison table with nft.
.PHONY: bench-tools
bench-tools:
	@command -v nft >/dev/null 2>&1 || { echo "Installing nftables (nft) for the data path comparison"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables; }

.PHONY: bench
bench: test-binaries real-nodes bench-tools ## Run the benchmarks and print the table of targets (BENCH, BENCH_TIERS, BENCH_ARGS).
	$(GO) test -c -o $(BENCH_TEST) ./test/bench
	$(GO) build -o $(BIN)/bench-summary ./test/bench/summary
	@{ \
	  echo "date: $$(date -u +%Y-%m-%dT%H:%M:%SZ)"; \
	  echo "cores: $$(nproc)"; \
	  echo "memory: $$(awk '/MemTotal/ {printf "%.1fGiB", $$2/1048576}' /proc/meminfo)"; \
	  echo "kernel: $$(uname -r)"; \
	  echo "commit: $$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"; \
	  if [ -n "$(BENCH)" ]; then \
	    $(BENCH_RUN) -test.bench '$(BENCH)' -bench.tier $(firstword $(BENCH_TIERS)) $(BENCH_ARGS)); \
	  else \
	    for tier in $(BENCH_TIERS); do $(BENCH_RUN) -test.bench '$(BENCH_TIERED)' -bench.tier $$tier $(BENCH_ARGS)); done; \
	    $(BENCH_RUN) -test.bench '$(BENCH_ONCE)' $(BENCH_ARGS)); \
	  fi; \
	} | $(BIN)/bench-summary | tee $(BENCH_OUT)

BENCHSTAT_VERSION ?= v0.0.0-20260908200009-22c9c6c9d4da
BENCHSTAT ?= $(BIN)/benchstat
BENCH_OLD ?= e727cf3
BENCH_ROUNDS ?= 10

$(BENCHSTAT):
	GOBIN=$(BIN) $(GO) install golang.org/x/perf/cmd/benchstat@$(BENCHSTAT_VERSION)

.PHONY: bench-compare
bench-compare: $(BENCHSTAT) ## Compare render and programming speed with BENCH_OLD, interleaved BENCH_ROUNDS times (benchstat).
	BENCHSTAT=$(BENCHSTAT) hack/bench-compare.sh $(BENCH_OLD) $(BENCH_ROUNDS)
