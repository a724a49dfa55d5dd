#!/usr/bin/env bash
# cluster/k8s/build-apiserver.sh - build kube-apiserver from the Go module proxy.
#
#   cluster/k8s/build-apiserver.sh OUT
#
# Used by cluster/deps.sh (step k8s) for the chart's server-side test
# (tests/integration/test_helm_apiserver.py). `go install
# k8s.io/kubernetes/cmd/kube-apiserver@vX` is refused because k8s.io/kubernetes
# replaces its k8s.io/* staging modules by ./staging directories that a module
# download does not have; so a throw-away wrapper module requires
# k8s.io/kubernetes and replaces every staging module its go.mod names by the
# published v0.N.x of the same release. About 10 minutes on 2 cores, once:
# the binary is cached by the caller.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-1.37.2}
OUT=${1:?usage: build-apiserver.sh OUT}
export PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "build-apiserver: go not found" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
modfile=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
[ -f "$modfile" ] || { echo "build-apiserver: cannot fetch k8s.io/kubernetes v$K8S_VERSION" >&2; exit 1; }
staging=$(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$modfile")
{
	echo "module mailstream.invalid/kube-apiserver-build"
	echo
	echo "go $(sed -n 's/^go //p' "$modfile")"
	echo
	echo "require k8s.io/kubernetes v$K8S_VERSION"
	echo
	for m in $staging; do echo "replace $m => $m v0.${K8S_VERSION#1.}"; done
} > go.mod
cat > tools.go <<'GO'
//go:build tools

// Package build only pins kube-apiserver's main package into this module.
package build

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
GO
go mod tidy >/dev/null
# The version the server reports (/version, which Helm checks against a
# chart's kubeVersion) is stamped at link time, as Kubernetes' own build does.
v=k8s.io/component-base/version
minor=${K8S_VERSION#1.}
minor=${minor%%.*}
CGO_ENABLED=0 go build -trimpath -o "$OUT.tmp" \
	-ldflags="-s -X $v.gitVersion=v$K8S_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean" \
	k8s.io/kubernetes/cmd/kube-apiserver
mv "$OUT.tmp" "$OUT"
echo "build-apiserver: $OUT ($("$OUT" --version))"
