//go:build tools

// Package tools only exists so the module has a package; the binaries are
// built with `go build k8s.io/kubernetes/cmd/...` from this module.
package tools
