// Command pause is the pod sandbox ("pause") container of the kind node image that
// scripts/kind-node-image.sh assembles where registry.k8s.io cannot be reached: it holds a
// pod's namespaces, reaps the children it inherits when the pod shares one PID namespace,
// and exits on SIGTERM or SIGINT, as Kubernetes' own pause does.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		fmt.Println("pause (pipeq tools/pause)")
		return
	}
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range signals {
		if s != syscall.SIGCHLD {
			fmt.Fprintf(os.Stderr, "Shutting down, got signal: %v\n", s)
			os.Exit(0)
		}
		// one SIGCHLD may stand for several exits: reap until none is left
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
