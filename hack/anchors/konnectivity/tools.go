//go:build tools

// Package tools names the upstream main packages this module builds, so that go mod tidy keeps them.
package tools

import (
	_ "sigs.k8s.io/apiserver-network-proxy/cmd/agent"
	_ "sigs.k8s.io/apiserver-network-proxy/cmd/server"
)
