# nftguard Makefile. Every tool the project needs is built from pinned Go
# modules into bin/ (git-ignored) and reused across runs.

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

BIN ?= $(CURDIR)/bin
GO ?= go
CONTROLLER_TOOLS_VERSION ?= v0.21.0
CONTROLLER_GEN ?= $(BIN)/controller-gen
KUBE_APISERVER ?= $(BIN)/kube-apiserver
ETCD ?= $(BIN)/etcd
KUBECTL ?= $(BIN)/kubectl
KUBE_VERSION ?= v1.36.3
KUBE_LDFLAGS := -X k8s.io/component-base/version.gitVersion=$(KUBE_VERSION) -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=36 -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$(KUBE_VERSION)
# Packages whose tests need root and network namespaces (skipped otherwise).
# The image reproducibility test builds twice from empty caches and the
# real-node suites start clusters: well past go test's default 10 minutes.
GOTEST_FLAGS ?= -count=1 -timeout 60m
export KUBEBUILDER_ASSETS ?= $(BIN)

.PHONY: all
all: build

# Local cluster, demo and end-to-end targets live in mk/.
-include mk/*.mk

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  %-18s %s\n", $$1, $$2 } /^##@/ { printf "\n%s\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate CRDs and the controller and agent ClusterRoles from markers.
	$(CONTROLLER_GEN) rbac:roleName=nftguard-controller crd paths="./api/..." paths="./internal/controller/..." paths="./internal/dropsapi/..." \
		output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac
	$(CONTROLLER_GEN) rbac:roleName=nftguard-agent paths="./internal/agent/..." output:rbac:artifacts:config=config/agent

.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate DeepCopy methods.
	$(CONTROLLER_GEN) object:headerFile=hack/boilerplate.go.txt paths="./api/..."

.PHONY: fmt
fmt: ## Run gofmt (fails if a file needs formatting).
	@out=$$(gofmt -l api cmd hack internal test); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

.PHONY: vet
vet: ## Run go vet.
	$(GO) vet ./...

.PHONY: verify-generated
verify-generated: manifests generate ## Fail if generated files are out of date.
	@git diff --exit-code -- config/crd config/rbac api || (echo "generated files are stale: run make manifests generate and commit"; exit 1)

.PHONY: test
test: manifests generate fmt vet test-binaries real-nodes log-shipper ## Run the whole suite (unit, envtest, dataplane, local clusters, real nodes).
	$(GO) test $(GOTEST_FLAGS) ./...

.PHONY: test-unit
test-unit: ## Run the pure unit tests only.
	$(GO) test $(GOTEST_FLAGS) ./internal/compiler/... ./api/...

.PHONY: fuzz
fuzz: ## Fuzz the compiler invariants for FUZZTIME (default 60s).
	$(GO) test ./internal/compiler -run '^$$' -fuzz FuzzCompile -fuzztime $${FUZZTIME:-60s}

##@ Build

.PHONY: build
build: ## Build the controller, the agent and the CNI plugin into bin/.
	$(GO) build -o $(BIN)/controller ./cmd/controller
	$(GO) build -o $(BIN)/agent ./cmd/agent
	$(GO) build -o $(BIN)/nftguard ./cmd/nftguard


##@ Tools

.PHONY: test-binaries
test-binaries: $(KUBE_APISERVER) $(ETCD) $(KUBECTL) ## Build kube-apiserver, etcd and kubectl for envtest and the local cluster.

$(CONTROLLER_GEN):
	GOBIN=$(BIN) $(GO) install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_TOOLS_VERSION)

# The Kubernetes components and etcd come from the separate module under test/tools so
# that the product's go.mod never depends on k8s.io/kubernetes.
# kube-apiserver is the multicall binary bin/kube (mk/nodes.mk) under its
# own name, as envtest runs it.
$(KUBE_APISERVER): $(KUBE)
	ln -sf kube $(KUBE_APISERVER)

$(KUBECTL): test/tools/go.mod test/tools/go.sum
	cd test/tools && $(GO) build -ldflags "$(KUBE_LDFLAGS)" -o $(KUBECTL) ./kubectl

$(ETCD): test/tools/go.mod test/tools/go.sum
	cd test/tools && $(GO) build -o $(ETCD) ./etcd
