# The test control plane (issue 3): etcd, kube-apiserver, kube-controller-manager and helm
# built from Go modules (tools/), started by tests/support/cluster.py. See tools/build.sh.
.PHONY: tools cluster-up cluster-down

tools: ## build etcd, kube-apiserver, kube-controller-manager, helm into the cache (once; ~10 min cold)
	@tools/build.sh >/dev/null

cluster-up: tools venv ## start the test control plane + process node; KUBECONFIG=.cluster/kubeconfig
	@$(PY) -m tests.support.cluster up --dir .cluster

cluster-down: ## stop what cluster-up started (processes, ports, etcd data)
	@$(PY) -m tests.support.cluster down --dir .cluster
