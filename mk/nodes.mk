##@ Real nodes

# The real-node local cluster (docs/local-cluster.md): the Kubernetes
# components as one multicall binary, containerd v2 and the CNI plugins from
# their Go modules, CoreDNS, Debian's runc, nftables and iptables, and the
# node images (pause, CoreDNS, the test server), all under bin/.
KUBE ?= $(BIN)/kube
CONTAINERD ?= $(BIN)/containerd
COREDNS ?= $(BIN)/coredns
CONTAINERD_VERSION ?= v2.1.4
NODE_IMAGE_DIR ?= $(BIN)/node-images
NODE_IMAGE_PLATFORM ?= linux/$(shell $(GO) env GOARCH)
NODE_PACKAGES := runc nftables iptables
# The test images: the sandbox (pause), CoreDNS and the pods' server.
NODE_IMAGES := pause=./test/images/pause,user=65535:65535 \
	coredns=./test/tools/coredns,user=65532:65532 \
	testserver=./test/images/testserver,user=0:0

.PHONY: node-binaries
node-binaries: $(KUBE) $(CONTAINERD) $(COREDNS) $(KUBECTL) $(ETCD) ## Build kubelet, kube-proxy, the control plane, containerd, the CNI plugins and CoreDNS into bin/.

# One binary links the shared code once (see test/tools/kube).
$(KUBE): test/tools/go.mod test/tools/go.sum test/tools/kube/main.go
	cd test/tools && $(GO) build -ldflags "$(KUBE_LDFLAGS)" -o $(KUBE) ./kube

$(CONTAINERD): test/tools/containerd/go.mod test/tools/containerd/go.sum
	mkdir -p $(BIN)/cni
	cd test/tools/containerd && CGO_ENABLED=0 $(GO) build -tags "no_btrfs no_devmapper no_zfs" \
		-ldflags "-X github.com/containerd/containerd/v2/version.Version=$(CONTAINERD_VERSION)" -o $(BIN)/ \
		github.com/containerd/containerd/v2/cmd/containerd \
		github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
		github.com/containerd/containerd/v2/cmd/ctr
	cd test/tools/containerd && CGO_ENABLED=0 $(GO) build -o $(BIN)/cni/ \
		github.com/containernetworking/plugins/plugins/main/ptp \
		github.com/containernetworking/plugins/plugins/ipam/host-local \
		github.com/containernetworking/plugins/plugins/main/loopback

$(COREDNS): test/tools/coredns/go.mod test/tools/coredns/go.sum test/tools/coredns/main.go
	cd test/tools/coredns && CGO_ENABLED=0 $(GO) build -o $(COREDNS) .

.PHONY: node-packages
node-packages: ## Install Debian's runc, nftables and iptables where they are missing (real nodes need them).
	@missing=; for p in $(NODE_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; }; \
	fi

.PHONY: node-images
node-images: imagebuild ## Build the real nodes' own images (pause, CoreDNS, test server) into bin/node-images.
	$(IMAGEBUILD) -out $(NODE_IMAGE_DIR) -registry nftguard.test -tag v1 -platforms $(NODE_IMAGE_PLATFORM) $(NODE_IMAGES)

.PHONY: real-nodes
real-nodes: node-binaries node-packages node-images images ## Everything the real-node cluster needs.
