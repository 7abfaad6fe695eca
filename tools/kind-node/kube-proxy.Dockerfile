# kube-proxy for the assembled kind node: it runs iptables-save/iptables-restore itself, so
# unlike the other control-plane images it needs a userland. Debian's iptables defaults to
# the nf_tables backend, the one kind's entrypoint picks on a Docker host using nf_tables.
FROM debian:bookworm-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      iptables conntrack \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
COPY kube-proxy /usr/local/bin/kube-proxy
