#!/usr/bin/env bash
# Make (once) a virtualenv per extra supported Python (.venv-3.12, .venv-3.13) with yurt-edge and its test
# extras, so `make test` runs the unit tier under each of them. Skipped when a venv's stamp matches
# setup.cfg and pyproject.toml, like .venv.
#
# Usage: hack/extra-pythons.sh              make the venvs that are missing or stale
#        hack/extra-pythons.sh list         print one venv python per line, change nothing
#        hack/extra-pythons.sh unit [ARGS]  run the unit tier (pytest ARGS tests/unit) under each; fails if any fails
# Env:   EXTRA_PYTHONS (default "3.12 3.13"; empty: none). An interpreter is found as `python3.X` on PATH
#        (when it runs: a pyenv shim of a version that is not selected does not) or in pyenv's versions.
set -euo pipefail
cd "$(dirname "$0")/.."

versions=${EXTRA_PYTHONS-3.12 3.13}

find_python() {
    local v=$1 candidate
    if "python$v" -c '' >/dev/null 2>&1; then
        command -v "python$v"
        return 0
    fi
    local root=${PYENV_ROOT:-$HOME/.pyenv}
    for candidate in $(ls -d "$root"/versions/"$v".*/bin/"python$v" 2>/dev/null | sort -V -r); do
        if "$candidate" -c '' >/dev/null 2>&1; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

if [ "${1:-}" = list ]; then
    for v in $versions; do
        echo ".venv-$v/bin/python"
    done
    exit 0
fi

if [ "${1:-}" = unit ]; then
    shift
    rc=0
    for v in $versions; do
        py=.venv-$v/bin/python
        echo "extra-pythons: the unit tier under $("$py" -c 'import sys; print(sys.version.split()[0])')" >&2
        "$py" -m pytest -q "$@" tests/unit || rc=1
    done
    exit "$rc"
fi

want=$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)
for v in $versions; do
    venv=.venv-$v
    stamp=$venv/.yurt-edge-installed
    [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && continue
    if ! python=$(find_python "$v"); then
        echo "setup: Python $v not found (yurt-edge's unit tier runs under every supported Python)." >&2
        echo "setup: install it (pyenv install $v, or your distribution's python$v and python$v-venv)," >&2
        echo "setup: or leave it out with EXTRA_PYTHONS=\"...\" (empty for none)." >&2
        exit 1
    fi
    echo "setup: installing yurt-edge and its test dependencies into $venv ($python)" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -e '.[test]'
    echo "$want" > "$stamp"
done
