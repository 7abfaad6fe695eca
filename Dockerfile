# syntax=docker/dockerfile:1
# The control-plane image: the API (`pipeq api`) and the operator (`pipeq operator`).
# Build: docker build -t pipeq:0.1.0 .
FROM python:3.11.10-slim-bookworm AS build
WORKDIR /src
COPY requirements.txt pyproject.toml README.md ./
COPY pipeq ./pipeq
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11.10-slim-bookworm
LABEL org.opencontainers.image.title="pipeq" \
      org.opencontainers.image.description="pipeq API and WorkerPool operator"
COPY --from=build /install /usr/local
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin pipeq
USER 10001:10001
ENV PYTHONUNBUFFERED=1 \
    PIPEQ_HOST=0.0.0.0 \
    PIPEQ_PORT=8000 \
    PIPEQ_DATA_DIR=/data
EXPOSE 8000 8080
# Kubernetes probes: the API has /healthz and /readyz; the operator serves /healthz on 8080.
HEALTHCHECK --interval=30s --timeout=3s CMD ["python", "-c", "import urllib.request,os; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PIPEQ_PORT\",\"8000\")}/healthz', timeout=2)"]
ENTRYPOINT ["pipeq"]
CMD ["api"]
