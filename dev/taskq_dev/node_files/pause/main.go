// Command pause is the sandbox ("pause") process of every pod on the harness's real nodes.
//
// It holds the pod's namespaces open, reaps children re-parented to it, and exits 0 on SIGINT or
// SIGTERM. Built by taskq_dev.nodeimage into a one-file image that each node's containerd imports.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for received := range signals {
		if received == syscall.SIGCHLD {
			reap()
			continue
		}
		os.Exit(0)
	}
}
