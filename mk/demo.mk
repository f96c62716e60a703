##@ Local cluster

.PHONY: demo
demo: ## The local-cluster demo (not built yet: see README).
	@echo "make demo arrives with the local cluster. Until then: make test." ; exit 1
