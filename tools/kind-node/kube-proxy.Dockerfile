# kube-proxy for the assembled kind node: it runs iptables-save/iptables-restore itself, so
# unlike the other control-plane images it needs a userland: Debian's iptables, with
# iptables-wrapper choosing legacy or nf_tables as the node does.
FROM debian:bookworm-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      iptables conntrack \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
COPY iptables-wrapper /usr/sbin/iptables-wrapper
RUN for c in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do \
      ln -sf iptables-wrapper "/usr/sbin/$c"; \
    done
COPY kube-proxy /usr/local/bin/kube-proxy
