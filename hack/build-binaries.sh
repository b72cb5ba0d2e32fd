#!/usr/bin/env bash
# Build the reference binaries the real test cluster runs (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy, kubectl, etcd, kwok, helm) from their official Go modules, into a cache
# outside the repository keyed by version. A warm run finds them and returns at once. CoreDNS, which only
# clusters that run Services on the edge node need, has its own directory keyed by its own version.
#
# Usage: hack/build-binaries.sh            prints the bin directory on its last line
#        hack/build-binaries.sh coredns    prints CoreDNS's directory on its last line
# Env:   YURT_EDGE_CACHE (default ~/.cache/yurt-edge)
set -euo pipefail

K8S_VERSION=v1.34.12      # keep in step with hack/testbins/go.mod
ETCD_VERSION=v3.6.4       # the etcd that Kubernetes 1.34 pins
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.21.4
COREDNS_VERSION=v1.12.1   # the CoreDNS kubeadm 1.34 installs

here=$(cd "$(dirname "$0")" && pwd)
cache=${YURT_EDGE_CACHE:-$HOME/.cache/yurt-edge}
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=mod GOSUMDB=off
# go.sum in hack/testbins pins every module's hash; the checksum database is not reachable from here.

if [ "${1:-}" = coredns ]; then
    # CoreDNS has no replace directives: installed straight from the module proxy at the pinned version, its
    # dependencies pinned by the go.sum of that release (the checksum database being out of reach, as above).
    dir="$cache/bin/coredns-$COREDNS_VERSION"
    if [ ! -x "$dir/coredns" ]; then
        command -v go >/dev/null || { echo "build-binaries: Go is needed to build CoreDNS" >&2; exit 1; }
        mkdir -p "$dir"
        work=$(mktemp -d "$cache/build.XXXXXX")
        trap 'rm -rf "$work"' EXIT
        echo "build-binaries: installing coredns $COREDNS_VERSION" >&2
        (cd "$work" && GOFLAGS= GOBIN="$work" go install -trimpath \
            -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" \
            "github.com/coredns/coredns@$COREDNS_VERSION")
        mv "$work/coredns" "$dir/coredns"
    fi
    echo "$dir"
    exit 0
fi
key="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}"
bin="$cache/bin/$key"
# kube-proxy joined later under the same key: a cache without it builds just kube-proxy, once.
names=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl etcd kwok helm)

complete() {
    for n in "${names[@]}"; do [ -x "$bin/$n" ] || return 1; done
}

if complete; then
    echo "$bin"
    exit 0
fi

command -v go >/dev/null || { echo "build-binaries: Go is needed to build the reference binaries" >&2; exit 1; }
mkdir -p "$bin"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT

minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

cd "$here/testbins"
for n in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    [ -x "$bin/$n" ] && continue
    echo "build-binaries: building $n $K8S_VERSION" >&2
    go build -trimpath -ldflags "$ldflags" -o "$work/$n" "k8s.io/kubernetes/cmd/$n"
    mv "$work/$n" "$bin/$n"
done
if [ ! -x "$bin/etcd" ]; then
    echo "build-binaries: building etcd $ETCD_VERSION" >&2
    go build -trimpath -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION" \
        -o "$work/etcd" go.etcd.io/etcd/server/v3
    mv "$work/etcd" "$bin/etcd"
fi
# kwok and helm carry no replace directives: install them straight from the module proxy.
if [ ! -x "$bin/kwok" ]; then
    echo "build-binaries: installing kwok $KWOK_VERSION" >&2
    (cd "$work" && GOFLAGS= GOBIN="$work" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION")
    mv "$work/kwok" "$bin/kwok"
fi
if [ ! -x "$bin/helm" ]; then
    echo "build-binaries: installing helm $HELM_VERSION" >&2
    (cd "$work" && GOFLAGS= GOBIN="$work" go install -trimpath \
        -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION")
    mv "$work/helm" "$bin/helm"
fi
complete
echo "$bin"
