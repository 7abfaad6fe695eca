# pipeq's two images, from one build stage:
#   docker build --target api    -t pipeq:0.1.0 .          # the API and the operator (`pipeq api`, `pipeq operator`)
#   docker build --target worker -t pipeq-worker:0.1.0 .   # `pipeq worker`, pipeline.sh and its tools
# (Docker's legacy builder builds the stages up to the target in order: the worker's build
# reuses the API's layers.) Bring your own pipeline: build FROM the worker image and COPY
# yours over /opt/pipeq/pipeline.sh, or mount a ConfigMap there (docs/pipeline.md).
# Base: Debian bookworm's slim image with Debian's python3 in a venv. It gets Debian's
# security updates, the worker's pipeline tools are the Debian packages pipeq is tested with
# (scripts/deps.sh installs the same), and it can be made without a registry
# (debootstrap --variant=minbase, scripts/docker.sh).
# Offline builds: scripts/images.sh passes a wheelhouse in build/wheels and PIP_NO_INDEX=1.
FROM debian:bookworm-slim AS build
# set by scripts/images.sh to install from the wheelhouse alone
ARG PIP_NO_INDEX
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/pipeq
WORKDIR /src
COPY build/wheels/ /wheels/
COPY requirements.txt pyproject.toml README.md ./
# The bytecode is compiled here, once, the dependencies' in their own layer: the images run
# read-only to their user with PYTHONDONTWRITEBYTECODE, so without it rq, redis and pydantic
# are compiled anew on every start. checked-hash: checked against the source, whatever the
# files' times.
# Not compiled: what never runs (pip, setuptools), and here the Kubernetes client, which
# only the API image runs (the operator): compiled in build-api below.
RUN /opt/pipeq/bin/pip install --no-cache-dir --disable-pip-version-check --find-links /wheels --no-compile -r requirements.txt \
 && find /opt/pipeq -name __pycache__ -prune -exec rm -rf {} + \
 && /opt/pipeq/bin/python -m compileall -q -j0 --invalidation-mode checked-hash -x '/(pip|setuptools|pkg_resources|kubernetes)/' /opt/pipeq/lib
COPY pipeq ./pipeq
RUN /opt/pipeq/bin/pip install --no-cache-dir --disable-pip-version-check --find-links /wheels --no-deps --no-compile . \
 && /opt/pipeq/bin/python -m compileall -q --invalidation-mode checked-hash "$(/opt/pipeq/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/pipeq"

# scripts/images.sh removes the results of older build stages by this label
LABEL pipeq.dev/stage=build

FROM build AS build-api
RUN /opt/pipeq/bin/python -m compileall -q -j0 --invalidation-mode checked-hash "$(/opt/pipeq/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/kubernetes"

FROM debian:bookworm-slim AS api
LABEL org.opencontainers.image.title="pipeq" \
      org.opencontainers.image.description="pipeq API and WorkerPool operator"
# python3 for the venv; tini as PID 1 reaps zombies and passes signals on; ca-certificates
# so that https:// inputs by URL (and S3 over TLS) can be verified
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 tini ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin pipeq
COPY --from=build-api /opt/pipeq /opt/pipeq
USER 10001:10001
ENV PATH=/opt/pipeq/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIPEQ_HOST=0.0.0.0 \
    PIPEQ_PORT=8000 \
    PIPEQ_DATA_DIR=/data
EXPOSE 8000 8080
# Kubernetes probes: the API has /healthz and /readyz; the operator serves /healthz on 8080.
HEALTHCHECK --interval=30s --timeout=3s CMD ["python3", "-c", "import urllib.request,os; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PIPEQ_PORT\",\"8000\")}/healthz', timeout=2)"]
ENTRYPOINT ["tini", "--", "pipeq"]
CMD ["api"]

FROM debian:bookworm-slim AS worker
LABEL org.opencontainers.image.title="pipeq-worker" \
      org.opencontainers.image.description="pipeq worker with pipeline.sh and its tools"
# The tool versions pipeq is tested with; tini as PID 1 reaps the zombies of pipelines;
# ca-certificates (kept current, not pinned) verify https:// inputs by URL.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3=3.11.2-1+b1 tini=0.19.0-1+b3 ca-certificates \
      fastp=0.23.2+dfsg-2+b1 minimap2=2.24+dfsg-3+b1 samtools=1.16.1-1 bcftools=1.16-1 tabix=1.16+ds-3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin pipeq
COPY --from=build /opt/pipeq /opt/pipeq
# pipeline.sh is 0755 in git, and COPY keeps its mode; its report's helpers beside it
COPY pipeline.sh /opt/pipeq/pipeline.sh
COPY pipeline_report /opt/pipeq/pipeline_report
# the pinned plotly.js (and its licence) that pipeline.sh copies next to each fastp.html so its
# charts work offline; scripts/images.sh runs scripts/plotly.sh to put it in build/vendor/
# (without it the folder is empty and fastp.html loads plotly from the internet, as fastp made it)
COPY build/vendor/ /opt/pipeq/vendor/
# compiled here: the image's user cannot write bytecode at run time
RUN python3 -m compileall -q --invalidation-mode checked-hash /opt/pipeq/pipeline_report
USER 10001:10001
WORKDIR /home/pipeq
ENV PATH=/opt/pipeq/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIPEQ_PIPELINE=/opt/pipeq/pipeline.sh \
    PIPEQ_DATA_DIR=/data
# A worker has no port: Kubernetes watches the process; a worker that dies loses its lease
# and its job is requeued (docs/reliability.md).
HEALTHCHECK NONE
ENTRYPOINT ["tini", "--", "pipeq"]
CMD ["worker"]
