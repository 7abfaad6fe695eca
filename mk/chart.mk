# The chart (helm/pipeq), the plain manifests rendered from it, and the kind end-to-end run.
.PHONY: manifests lint-chart e2e-kind
HELM = $(shell tools/build.sh)/helm

manifests: tools ## render manifests/ from the chart with default values (a test checks they are current)
	@$(PY) -m tests.support.chart render manifests

lint-chart: tools ## helm lint the chart
	$(HELM) lint helm/pipeq

e2e-kind: venv ## for people with Docker: kind cluster, both images, the chart, the end-to-end test
	scripts/e2e-kind.sh
