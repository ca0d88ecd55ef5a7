#!/usr/bin/env bash
# One entry point for people and CI: set this machine up, then run the demo or the test suite.
#   bash scripts/dev.sh demo   # install what is needed, run `lifekit demo`
#   bash scripts/dev.sh test   # install what is needed, run every test (nothing skipped as root)
#   bash scripts/dev.sh setup  # only install
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[dev] %s\n' "$*" >&2; }

setup() {
    if ! command -v uv >/dev/null; then
        log "installing uv (the workspace manager) with pip"
        python3 -m pip install --quiet --disable-pip-version-check uv
    fi
    export UV_PYTHON_DOWNLOADS=never
    log "syncing the project environment in .venv (uv sync --all-packages --locked)"
    uv sync --quiet --all-packages --locked
    if [ "$(id -u)" = 0 ]; then
        # The lab's one list of Debian packages (the lab's and the kits' tools): it prints
        # what it installs, installs nothing when all is there, then checks the kernel.
        uv run --no-sync lifekit lab bootstrap
    else
        log "not root: skipping 'lifekit lab bootstrap' (the lab and its tests need root)"
    fi
}

run_tests() {
    # pytest exits 5 when it collects nothing: that is a broken suite, never a pass.
    set +e
    uv run --no-sync coverage run -m pytest "$@"
    status=$?
    set -e
    if [ "$status" = 5 ]; then
        log "pytest collected no tests: the suite is broken"
        exit 1
    fi
    uv run --no-sync coverage combine -q >/dev/null 2>&1 || true
    log "branch coverage of the pure engine:"
    uv run --no-sync coverage report --include='lifekit/_engine/*' || true
    [ "$status" = 0 ] || exit "$status"
    log "static checks: ruff, ruff format --check, mypy --strict"
    uv run --no-sync ruff check .
    uv run --no-sync ruff format --check .
    uv run --no-sync mypy
}

cmd="${1:-test}"
shift || true
case "$cmd" in
    setup) setup ;;
    demo) setup; exec uv run --no-sync lifekit demo "$@" ;;
    test) setup; run_tests "$@" ;;
    *) echo "usage: bash scripts/dev.sh {demo|test|setup} [args...]" >&2; exit 2 ;;
esac
