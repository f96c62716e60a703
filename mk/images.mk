##@ Images

# The kustomize images entry of config/default is the one place that names
# the images; make images builds them under those names. IMAGE_REGISTRY is
# the repository prefix (ghcr.io/nftguard), IMAGE_TAG the version.
IMAGE_KUSTOMIZATION := config/default/kustomization.yaml
IMAGE_REGISTRY ?= $(shell awk '$$1 == "newName:" && $$2 ~ /\/controller$$/ { sub(/\/controller$$/, "", $$2); print $$2; exit }' $(IMAGE_KUSTOMIZATION))
IMAGE_TAG ?= $(shell awk '$$1 == "newTag:" { print $$2; exit }' $(IMAGE_KUSTOMIZATION))
IMAGE_PLATFORMS ?= linux/amd64,linux/arm64
IMAGE_DIR ?= $(BIN)/images
IMAGEBUILD ?= $(BIN)/imagebuild
# PUSH=<registry>/<repo> pushes the images there as well (docker config or
# credential helpers authenticate); then point the kustomize entry at it.
PUSH ?=
# The product images: the controller runs as the nonroot user; the agent
# runs as root with only NET_ADMIN (a capability a non-root process cannot
# use without ambient capabilities, which Kubernetes does not grant). The
# agent image also carries the CNI plugin, /nftguard, which the agent
# installs into the node's CNI bin directory (--cni-plugin-source).
AGENT_IMAGE := agent=./cmd/agent+./cmd/nftguard,user=0:0
PRODUCT_IMAGES := controller=./cmd/controller,user=65532:65532 $(AGENT_IMAGE)

.PHONY: imagebuild
imagebuild:
	$(GO) build -o $(IMAGEBUILD) ./hack/imagebuild

.PHONY: images
images: imagebuild ## Build the controller and agent OCI images (multi-arch) into bin/images; PUSH=<registry>/<repo> pushes them.
	$(IMAGEBUILD) -out $(IMAGE_DIR) -registry $(if $(PUSH),$(PUSH),$(IMAGE_REGISTRY)) -tag $(IMAGE_TAG) \
		-platforms $(IMAGE_PLATFORMS) $(if $(PUSH),-push) $(PRODUCT_IMAGES)
