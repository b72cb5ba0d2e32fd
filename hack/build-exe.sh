#!/usr/bin/env bash
# Build (once per source) yurt-edge's wheel and its self-contained executable, cached outside the repository
# keyed by the hash of the sources that go into them:
#
#   <cache>/exe/<key>/yurt_edge-<version>-py3-none-any.whl
#   <cache>/exe/<key>/yurt-edge-<version>-linux-<arch>.tar.gz    (+ .sha256)
#   <cache>/exe/<key>/yurt-edge/                                 (the same tree, unpacked)
#
# The tree is what a node's /opt/yurt-edge holds: lib/yurt-edge/yurt-edge (PyInstaller one-directory
# bundle: the executable, its Python and every dependency under lib/yurt-edge/_internal) and bin/yurthub,
# bin/yurt-tunnel-agent, bin/yurtctl, bin/yurt-tunnel-server, bin/yurt-manager, symbolic links to it (it
# dispatches on the name it is called by: hack/exe_main.py).
#
# Shared libraries are stripped of their symbols (libpython alone: 23 MB to 6 MB); tracebacks are Python's.
#
# Reproducible: the wheel, the bundle and the tarball carry SOURCE_DATE_EPOCH (default: the date of the
# last commit that touched these sources) as every timestamp; the build tools and every dependency are
# pinned in hack/exe-requirements.txt; PYTHONHASHSEED is fixed. Prints the version and both sha256 sums,
# and the output directory on its last line.
#
# Env: YURT_EDGE_CACHE (default ~/.cache/yurt-edge), PYTHON (default python3.11; must be built with
#      --enable-shared, as Debian's and pyenv's are), SOURCE_DATE_EPOCH.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
cache=${YURT_EDGE_CACHE:-$HOME/.cache/yurt-edge}
inputs=(setup.cfg pyproject.toml README.md yurthub tunnel converter systemd charts hack/build-exe.sh hack/exe_main.py hack/exe-requirements.txt)

if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    files=$(git ls-files -co --exclude-standard -- "${inputs[@]}" | sort)
    export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct -- "${inputs[@]}" 2>/dev/null || true)}
else
    files=$(find "${inputs[@]}" \( -type f -o -type l \) ! -path '*/__pycache__/*' | sort)
fi
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-315532800}
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
digest() {
    local f
    while read -r f; do
        if [ -L "$f" ]; then echo "$f -> $(readlink "$f")"; else sha256sum "$f"; fi
    done
}
key=$( (echo "$pyver $(uname -m)"; echo "$files" | digest) | sha256sum | cut -c1-16)
out="$cache/exe/$key"

report() {
    local tarball
    tarball=$(ls "$out"/yurt-edge-*.tar.gz)
    echo "build-exe: $("$out/yurt-edge/bin/yurthub" --version)" >&2
    echo "build-exe: $(cd "$out" && sha256sum yurt_edge-*.whl)" >&2
    echo "build-exe: $(cat "$tarball.sha256")" >&2
    echo "$out"
}

if [ -f "$out/.complete" ]; then
    report
    exit 0
fi

# The build tools, pinned, in a virtualenv of their own (cached by the pins and the Python).
tools_key=$( (echo "$pyver"; cat hack/exe-requirements.txt) | sha256sum | cut -c1-12)
tools="$cache/exe/tools-$tools_key"
if [ ! -f "$tools/.complete" ]; then
    echo "build-exe: installing the pinned build tools into $tools" >&2
    rm -rf "$tools"
    "$python" -m venv "$tools"
    "$tools/bin/python" -m pip install -q --no-deps -r hack/exe-requirements.txt
    touch "$tools/.complete"
fi

work=$(mktemp -d "$cache/exe/.build-XXXXXX")
trap 'rm -rf "$work"' EXIT
# Build from a copy of exactly the hashed files: a stale build/ directory in the checkout never leaks in.
mkdir "$work/src"
echo "$files" | tar -cf - -T - | tar -xf - -C "$work/src"
echo "build-exe: building the wheel (SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH)" >&2
(cd "$work/src" && "$tools/bin/python" -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" .)
wheel=$(ls "$work"/dist/yurt_edge-*.whl)
version=$(basename "$wheel" | cut -d- -f2)
"$tools/bin/python" -m pip install -q --no-deps --force-reinstall "$wheel"

echo "build-exe: bundling the executable with PyInstaller" >&2
printf '{"version": "%s", "source": "%s"}\n' "$version" "$key" > "$work/yurt-edge-build.json"
cp hack/exe_main.py "$work/yurt-edge.py"
(
    cd "$work"
    PYTHONHASHSEED=0 "$tools/bin/pyinstaller" --log-level WARN --noconfirm --clean --onedir --strip --name yurt-edge \
        --distpath "$work/bundle" --workpath "$work/pyi" --specpath "$work" \
        --collect-submodules yurthub --collect-submodules tunnel --collect-submodules converter \
        --collect-data converter --add-data "$work/yurt-edge-build.json:." \
        "$work/yurt-edge.py" >&2
)
tree="$work/tree/yurt-edge"
mkdir -p "$tree/bin" "$tree/lib"
mv "$work/bundle/yurt-edge" "$tree/lib/yurt-edge"
for name in yurthub yurt-tunnel-agent yurt-tunnel-server yurtctl yurt-manager; do
    ln -s ../lib/yurt-edge/yurt-edge "$tree/bin/$name"
done
"$tree/bin/yurthub" --version >/dev/null

arch=$(uname -m)
tarball="yurt-edge-$version-linux-$arch.tar.gz"
tar -C "$work/tree" --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
    --format=gnu -cf - yurt-edge | gzip -n -9 > "$work/$tarball"
(cd "$work" && sha256sum "$tarball" > "$tarball.sha256")

rm -rf "$out"
mkdir -p "$out"
mv "$wheel" "$work/$tarball" "$work/$tarball.sha256" "$tree" "$out/"
touch "$out/.complete"
report
