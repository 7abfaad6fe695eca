# The control-plane image: the API (`pipeq api`) and the operator (`pipeq operator`).
# Build: docker build -t pipeq:0.1.0 .
# Base: Debian bookworm's slim image with Debian's python3 in a venv. It is the base of the
# worker image too (whose pipeline tools come from Debian), gets Debian's security updates,
# and can be made without a registry (debootstrap --variant=minbase, scripts/docker.sh).
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
# The bytecode is compiled here, once, the dependencies' in their own layer: the image runs
# read-only to its user with PYTHONDONTWRITEBYTECODE, so without it rq, redis and pydantic
# are compiled anew on every start. checked-hash: checked against the source, whatever the
# files' times.
# Not compiled: what never runs here (pip, setuptools).
RUN /opt/pipeq/bin/pip install --no-cache-dir --disable-pip-version-check --find-links /wheels --no-compile -r requirements.txt \
 && find /opt/pipeq -name __pycache__ -prune -exec rm -rf {} + \
 && /opt/pipeq/bin/python -m compileall -q -j0 --invalidation-mode checked-hash -x '/(pip|setuptools|pkg_resources)/' /opt/pipeq/lib
COPY pipeq ./pipeq
RUN /opt/pipeq/bin/pip install --no-cache-dir --disable-pip-version-check --find-links /wheels --no-deps --no-compile . \
 && /opt/pipeq/bin/python -m compileall -q --invalidation-mode checked-hash "$(/opt/pipeq/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/pipeq"

# scripts/images.sh removes the results of older build stages by this label
LABEL pipeq.dev/stage=build

FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="pipeq" \
      org.opencontainers.image.description="pipeq API and WorkerPool operator"
# python3 for the venv; tini as PID 1 reaps zombies and passes signals on; ca-certificates
# so that https:// inputs by URL (and S3 over TLS) can be verified
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 tini ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin pipeq
COPY --from=build /opt/pipeq /opt/pipeq
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
