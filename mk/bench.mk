# Benchmarks (issue 8): pipeq against the plain FastAPI + RQ app in bench/baseline/, in one run.
# Tables on stdout and in bench/results/tables.md, figures in bench/results/*.png; see docs/benchmarks.md.
.PHONY: bench bench-deps bench-quick bench-profile bench-s3 bench-scale bench-keda bench-report bench-fairshare

bench-deps:
	@PIPEQ_EXTRA_DEBS=wrk scripts/deps.sh

bench: deps venv bench-deps ## benchmarks against plain FastAPI + RQ: submission, status, dispatch, fleet, history (~13 min)
	$(PY) -m bench.run $(BENCH_ARGS)

bench-quick: deps venv bench-deps ## a one-minute smoke run of the benchmarks (figures not for quoting)
	$(PY) -m bench.run --quick --out bench/out

bench-profile: venv ## pyinstrument profiles of the API's submission and status paths (bench/results/profile-*.txt)
	$(PY) -m bench.profile_api --path submit --out bench/results/profile-submit.txt
	$(PY) -m bench.profile_api --path status --out bench/results/profile-status.txt

bench-s3: deps venv ## big uploads with object storage: POST /run_pipeline vs presigned vs plain boto3, 1 GB (~5 min; outside make test)
	$(PY) -m bench.s3 $(BENCH_S3_ARGS)

bench-scale: deps venv tools ## the operator's reaction to bursts and its idle cost with 50 pools, on the test control plane (~5 min; BENCH_SCALE_ARGS=--tmpfs)
	$(PY) -m bench.scale $(BENCH_SCALE_ARGS)

bench-keda: deps venv tools ## KEDA 2.21 (tools/keda, built once: ~30 min) and pipeq on one kind cluster: bursts (first replica, full scale), interrupted jobs on a scale-down (~20 min; outside make test)
	$(PY) -m bench.keda $(BENCH_KEDA_ARGS)

bench-report: deps venv ## what the report's plots cost: lambda (bowtie2-examples) and a simulated 2 M-read run (~6 min; docs/pipeline.md)
	@PIPEQ_EXTRA_DEBS=bowtie2-examples scripts/deps.sh
	$(PY) -m bench.report_plots $(BENCH_REPORT_ARGS)
bench-fairshare: deps venv ## quotas and the fair share (issue 22, figures 2-6): 429s through 2 API processes, B behind A's burst vs FIFO, weights, busy workers, enqueue latency (~6 min)
	$(PY) -m bench.fairshare $(BENCH_FAIRSHARE_ARGS)
