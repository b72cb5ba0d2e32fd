#!/usr/bin/env bash
# Build the benchmark anchors -- the Go programs yurt-edge is measured against -- from their official Go
# modules, into a cache outside the repository keyed by version. A warm run finds them and returns at once.
# Only `make bench` runs this; tests never need the anchors.
#
#   konnectivity  proxy-server, proxy-agent   sigs.k8s.io/apiserver-network-proxy   (hack/anchors/konnectivity)
#   OpenYurt      yurthub                     github.com/openyurtio/openyurt         (hack/anchors/openyurt)
#
# Both upstream modules carry replace directives, which `go install module@version` refuses; each is built
# through a small wrapper module that requires it and states the same replacements (see each go.mod).
#
# Usage: hack/build-anchors.sh [konnectivity|openyurt]...   prints the bin directory on its last line
# Env:   YURT_EDGE_CACHE (default ~/.cache/yurt-edge)
set -euo pipefail

KONNECTIVITY_VERSION=v0.36.0   # keep in step with hack/anchors/konnectivity/go.mod
OPENYURT_VERSION=v1.7.0        # keep in step with hack/anchors/openyurt/go.mod

here=$(cd "$(dirname "$0")" && pwd)
cache=${YURT_EDGE_CACHE:-$HOME/.cache/yurt-edge}
key="konnectivity-${KONNECTIVITY_VERSION}_openyurt-${OPENYURT_VERSION}"
bin="$cache/anchors/$key"

wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(konnectivity openyurt)
names=()
for w in "${wanted[@]}"; do
    case "$w" in
        konnectivity) names+=(proxy-server proxy-agent) ;;
        openyurt) names+=(yurthub) ;;
        *) echo "build-anchors: unknown anchor $w (konnectivity or openyurt)" >&2; exit 2 ;;
    esac
done

complete() {
    for n in "${names[@]}"; do [ -x "$bin/$n" ] || return 1; done
}

if complete; then
    echo "$bin"
    exit 0
fi

command -v go >/dev/null || { echo "build-anchors: Go is needed to build the benchmark anchors" >&2; exit 1; }
mkdir -p "$bin"
work=$(mktemp -d "$cache/anchors/build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# go.sum in each wrapper module pins every module's hash, checked against the checksum database when
# the sum was first recorded; -mod=readonly refuses a build that would need a hash go.sum does not have.
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=readonly

build() {  # build NAME VERSION DIR PACKAGE [LDFLAGS]
    local name=$1 version=$2 dir=$3 pkg=$4 ldflags=${5:-}
    [ -x "$bin/$name" ] && return 0
    echo "build-anchors: building $name $version" >&2
    (cd "$here/anchors/$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$work/$name" "$pkg")
    mv "$work/$name" "$bin/$name"
}

# OpenYurt replaces k8s.io/kubernetes with github.com/kubernetes/kubernetes v1.34.0: the same tree published
# under its GitHub path, whose go.mod still says k8s.io/kubernetes. The checksum database has no record of that
# module (its lookup answers 404; presumably because a module whose go.mod names another path can only be used
# as a replacement, so no ordinary `go get` ever had it logged), so its hash in hack/anchors/openyurt/go.sum was recorded on first download
# (GONOSUMDB=github.com/kubernetes/kubernetes for that module alone) and is not verified by the database.
# What is verified instead, before the first build: its files are byte for byte those of
# k8s.io/kubernetes v1.34.0, which the checksum database does know.
verify_kubernetes_replacement() {
    local replaced official
    replaced=$(cd "$here/anchors/openyurt" && go mod download -json k8s.io/kubernetes | dir_of)  # the replacement
    official=$(cd "$work" && GOFLAGS= go mod download -json k8s.io/kubernetes@v1.34.0 | dir_of)
    if [ -z "$replaced" ] || [ -z "$official" ]; then
        echo "build-anchors: could not download both Kubernetes trees to compare them" >&2
        exit 1
    fi
    if ! diff -r -q "$replaced" "$official" >&2; then
        echo "build-anchors: github.com/kubernetes/kubernetes v1.34.0 differs from k8s.io/kubernetes v1.34.0" >&2
        exit 1
    fi
}

dir_of() {  # the "Dir" of `go mod download -json` on stdin
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}

for w in "${wanted[@]}"; do
    case "$w" in
        konnectivity)
            build proxy-server "$KONNECTIVITY_VERSION" konnectivity sigs.k8s.io/apiserver-network-proxy/cmd/server
            build proxy-agent "$KONNECTIVITY_VERSION" konnectivity sigs.k8s.io/apiserver-network-proxy/cmd/agent
            ;;
        openyurt)
            [ -x "$bin/yurthub" ] || verify_kubernetes_replacement
            build yurthub "$OPENYURT_VERSION" openyurt github.com/openyurtio/openyurt/cmd/yurthub \
                "-X github.com/openyurtio/openyurt/pkg/projectinfo.gitVersion=$OPENYURT_VERSION"
            ;;
    esac
done
complete
echo "$bin"
