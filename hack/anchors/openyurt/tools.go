//go:build tools

// Package tools names the upstream main package this module builds, so that go mod tidy keeps it.
package tools

import (
	_ "github.com/openyurtio/openyurt/cmd/yurthub"
)
