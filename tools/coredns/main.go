// CoreDNS for the assembled kind node image, linking only the plugins that image's Corefiles
// use, instead of CoreDNS's own main (github.com/coredns/coredns), which links every plugin of
// plugin.cfg and with them the AWS, Azure, Google Cloud, Datadog, etcd and Nomad clients.
// This is the pattern CoreDNS documents for a custom build: a main importing coremain and
// the chosen plugins, with dnsserver.Directives set to those plugins in plugin.cfg's order.
//
// The plugins are the ones of the Corefile kubeadm v1.36.5 writes
// (cmd/kubeadm/app/phases/addons/dns/manifests.go: errors, health, ready, kubernetes,
// prometheus, forward, cache, loop, reload, loadbalance) and whoami, which
// scripts/kind-cluster.sh's check serves through a Service; the ones these import
// themselves (debug, dnstap, metadata, transfer) are linked too (`coredns -plugins`). A
// Corefile naming any other plugin fails to load ("Unknown directive"): add its import here.
package main

import (
	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics" // the "prometheus" directive
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
	_ "github.com/coredns/coredns/plugin/whoami"
)

// The plugins imported above have registered themselves (in their init) by now. Keep
// CoreDNS's own directive list (generated from plugin.cfg, so its order is the execution
// order) to those, so the order is upstream's and the set is what this main links.
func init() {
	var linked []string
	for _, d := range dnsserver.Directives {
		if _, err := caddy.DirectiveAction("dns", d); err == nil {
			linked = append(linked, d)
		}
	}
	dnsserver.Directives = linked
}

func main() {
	coremain.Run()
}
