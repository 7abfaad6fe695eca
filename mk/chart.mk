# The chart (helm/pipeq) and the plain manifests rendered from it.
.PHONY: manifests lint-chart
HELM = $(shell tools/build.sh)/helm

manifests: tools ## render manifests/ from the chart with default values (a test checks they are current)
	@$(PY) -m tests.support.chart render manifests

lint-chart: tools ## helm lint the chart
	$(HELM) lint helm/pipeq
