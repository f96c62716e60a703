##@ kubectl plugin

.PHONY: plugin
plugin: ## Build the kubectl plugin into bin/kubectl-nftguard (put bin/ on PATH, then: kubectl nftguard).
	$(GO) build -o $(BIN)/kubectl-nftguard ./cmd/kubectl-nftguard
