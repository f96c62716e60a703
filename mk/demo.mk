##@ Local cluster

# The demo's cluster: its state, kubeconfig, logs and drop logs live in
# DEMO_DIR (git-ignored); its network namespaces are named ngd-$(DEMO_NAME)-*.
DEMO_DIR ?= $(CURDIR)/.demo
DEMO_NAME ?= demo
DEMO_NODES ?= 2
NFTGUARD_DEV ?= $(BIN)/nftguard-dev
DEMO_KUBECTL = $(KUBECTL) --kubeconfig $(DEMO_DIR)/kubeconfig

.PHONY: nftguard-dev
nftguard-dev: ## Build bin/nftguard-dev, the local cluster's command.
	$(GO) build -o $(NFTGUARD_DEV) ./cmd/nftguard-dev

.PHONY: demo-build
demo-build: test-binaries real-nodes nftguard-dev plugin ## Build everything the demo runs.

# The demo's story, on either cluster: the matrix before any policy,
# config/samples, enforcement, the matrix again, an allowed and a denied
# connection with its drop-log lines (on real nodes also as kubectl logs of
# the agent shows them), and explain. DEMO_PROBE is how probes reach a pod
# (--service: its Service ClusterIP), DEMO_THROUGH says so in the headings.
define DEMO_STORY
@echo
@echo "==> Reachability before any policy$(DEMO_THROUGH): every pod reaches every pod"
@$(NFTGUARD_DEV) matrix --state-dir $(DEMO_DIR) $(DEMO_PROBE)
@echo
@echo "==> Applying config/samples: the shop-baseline DefaultDeny and the shop's NetworkPolicies"
$(DEMO_KUBECTL) apply -k config/samples
@set -x; \
$(DEMO_KUBECTL) wait --for=condition=Enforced defaultdeny/shop-baseline --timeout=90s; \
$(NFTGUARD_DEV) wait --state-dir $(DEMO_DIR) --timeout 90s; \
{ set +x; } 2>/dev/null; \
echo; echo "==> Enforcement"; \
$(DEMO_KUBECTL) get nftguard; \
echo; echo "==> Reachability with the policies$(DEMO_THROUGH): only the shop's paths and DNS remain"; \
$(NFTGUARD_DEV) matrix --state-dir $(DEMO_DIR) $(DEMO_PROBE); \
echo; echo "==> An allowed connection, then a denied one and the drop-log lines it produced"; \
$(NFTGUARD_DEV) probe --state-dir $(DEMO_DIR) $(DEMO_PROBE) storefront/web backend/api http; \
$(NFTGUARD_DEV) probe --state-dir $(DEMO_DIR) $(DEMO_PROBE) --expect blocked --drops storefront/web payments/payments https; \
if [ "$(DEMO_REAL)" = yes ]; then \
  echo; echo "==> The same drop as a security team reads it: kubectl logs of the agent on payments' node"; \
  node=$$($(DEMO_KUBECTL) -n payments get pod payments -o jsonpath='{.spec.nodeName}'); \
  agent=$$($(DEMO_KUBECTL) -n nftguard-system get pod -l app.kubernetes.io/component=agent --field-selector spec.nodeName=$$node -o name); \
  echo "$$ kubectl -n nftguard-system logs $$agent -c drop-log --tail 3"; \
  $(DEMO_KUBECTL) -n nftguard-system logs $$agent -c drop-log --tail 3; \
fi; \
echo; echo "==> Why it was denied, from the rule sets the agents program"; \
echo "$$ kubectl nftguard explain --from storefront/web --to payments/payments --port https"; \
$(BIN)/kubectl-nftguard --kubeconfig $(DEMO_DIR)/kubeconfig explain --from storefront/web --to payments/payments --port https || true
endef

.PHONY: demo
demo: DEMO_PROBE := --service
demo: DEMO_THROUGH := , through the Services
demo: DEMO_REAL := yes
demo: demo-build ## Install nftguard from its images on 2 real nodes (kubelet, containerd, kube-proxy) and run the shop (root).
	@[ "$$(id -u)" = 0 ] || { echo "make demo needs root: its nodes are network, mount and PID namespaces"; exit 1; }
	@echo "==> Starting $(DEMO_NODES) real nodes (kubelet, containerd, runc, kube-proxy), CoreDNS and the shop;"
	@echo "    nftguard is installed as a user installs it: its images imported, kubectl apply -k config/default"
	$(NFTGUARD_DEV) up --state-dir $(DEMO_DIR) --name $(DEMO_NAME) --nodes $(DEMO_NODES) --recreate \
		--bin-dir $(BIN) --real-nodes
	$(DEMO_KUBECTL) -n nftguard-system rollout status deployment/nftguard-controller --timeout=3m
	$(DEMO_KUBECTL) -n nftguard-system rollout status daemonset/nftguard-agent --timeout=3m
	$(DEMO_KUBECTL) get pods -A -o wide
	$(DEMO_STORY)
	@echo
	@echo "==> The cluster keeps running. From this directory:"
	@echo "  export KUBECONFIG=$(DEMO_DIR)/kubeconfig"
	@echo "  export PATH=$(BIN):\$$PATH                                    # kubectl nftguard: the plugin"
	@echo "  kubectl get nftguard"
	@echo "  kubectl nftguard status"
	@echo "  kubectl nftguard explain --from backend/api --to payments/payments --port https"
	@echo "  kubectl exec -n storefront web -- /testserver connect api.backend:8080"
	@echo "  kubectl -n nftguard-system logs -l app.kubernetes.io/component=agent -c drop-log"
	@echo "  bin/nftguard-dev probe --service storefront/web backend/cache redis   # FROM TO PORT[/PROTO]"
	@echo "  bin/nftguard-dev matrix --service --port 53/UDP"
	@echo "  ip netns exec ngd-$(DEMO_NAME)-node-1 nft list table inet nftguard"
	@echo "  make demo-down                                              # remove every process, namespace and cgroup"

.PHONY: demo-netns
demo-netns: test-binaries nftguard-dev build plugin ## The demo on the namespace-only cluster (agents and controller as processes; no images).
	@[ "$$(id -u)" = 0 ] || { echo "make demo needs root: its nodes and pods are network namespaces"; exit 1; }
	@echo "==> Starting a $(DEMO_NODES)-node local cluster (nodes and pods are network namespaces)"
	$(NFTGUARD_DEV) up --state-dir $(DEMO_DIR) --name $(DEMO_NAME) --nodes $(DEMO_NODES) --recreate \
		--bin-dir $(BIN) --controller $(BIN)/controller --agent $(BIN)/agent
	$(DEMO_STORY)
	@echo
	@echo "==> The cluster keeps running. From this directory:"
	@echo "  export KUBECONFIG=$(DEMO_DIR)/kubeconfig"
	@echo "  export PATH=$(BIN):\$$PATH                                    # kubectl nftguard: the plugin"
	@echo "  kubectl get nftguard"
	@echo "  kubectl nftguard status"
	@echo "  kubectl nftguard explain --from backend/api --to payments/payments --port https"
	@echo "  kubectl apply -f config/samples/defaultdeny_audit.yaml"
	@echo "  bin/nftguard-dev probe storefront/web backend/cache redis    # FROM TO PORT[/PROTO], -6 for IPv6"
	@echo "  bin/nftguard-dev matrix --port 53/UDP"
	@echo "  bin/nftguard-dev drops                                      # the agents' drop logs"
	@echo "  bin/nftguard-dev status"
	@echo "  ip netns exec ngd-$(DEMO_NAME)-node-1 nft list table inet nftguard"
	@echo "  make demo-down                                              # remove every process and namespace"

.PHONY: demo-down
demo-down: ## Stop the demo's cluster and remove everything it created.
	@if [ -x $(NFTGUARD_DEV) ]; then $(NFTGUARD_DEV) down --state-dir $(DEMO_DIR); \
	elif [ -e $(DEMO_DIR)/state.json ]; then $(MAKE) --no-print-directory nftguard-dev && $(NFTGUARD_DEV) down --state-dir $(DEMO_DIR); \
	else echo "No demo cluster in $(DEMO_DIR)"; fi

.PHONY: demo-status
demo-status: ## Show the demo cluster's nodes, pods and processes.
	@$(NFTGUARD_DEV) status --state-dir $(DEMO_DIR)
