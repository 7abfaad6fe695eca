# pipeq on kind (issue 14): real images on a real kubelet. tests/support/kind.py does the work;
# scripts/docker.sh, scripts/kind-node-image.sh, scripts/kind-cluster.sh and scripts/images.sh
# are its steps. `make test` runs the same suite (tests/kind).
.PHONY: kind-up kind-down e2e-kind images

images: ## build the images (pipeq, pipeq-worker, pipeq-redis) with Docker, offline from a wheelhouse
	@scripts/docker.sh base >/dev/null
	@scripts/images.sh

kind-up: venv tools ## a kind cluster with pipeq's images and chart; prints the API's URL and the kubeconfig
	@$(PY) -m tests.support.kind up --dir .kind

kind-down: venv ## delete the kind-up cluster, and stop the dockerd that kind-up started (if it did)
	@$(PY) -m tests.support.kind down --dir .kind

e2e-kind: venv tools ## the kind suite alone (tests/kind): its own cluster, deleted at the end
	$(PY) -m pytest -q tests/kind

bench-kind: venv tools ## scale from zero on kind: submission -> the pipeline's first line, 10 runs, with its steps
	$(PY) -m bench.kind_start --runs 10 --json bench/results/kind-start.json
