#!/usr/bin/env bash
# Sets up .venv with the test and docs extras and the Debian packages the tests need (below), checks the code (ruff,
# the import layering), builds the documentation site (mkdocs build --strict: a dead link or a missing page fails),
# then runs pytest. Usage: bash scripts/test.sh [pytest args]; the fast tier: -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
# The interpreter: $PYTHON if set; else the distribution's /usr/bin/python3.11 (an optimised build) before the first
# python3.11 on PATH (pyenv builds without optimisations unless asked, and took about a quarter more CPU on the
# suite's typical work: benchmarks/interpreters.py). One that cannot make a venv (no ensurepip) is passed over.
if [ ! -x .venv/bin/python ]; then
  for PY in ${PYTHON:-/usr/bin/python3.11 python3.11}; do
    command -v "$PY" >/dev/null && "$PY" -m venv .venv 2>/dev/null && break
    rm -rf .venv
  done
  [ -x .venv/bin/python ] || { echo "scripts/test.sh: no Python 3.11 here can make a venv (python3.11 -m venv); set PYTHON, or on Debian: apt install python3.11-venv" >&2; exit 2; }
fi
.venv/bin/python -m pip install -q --upgrade pip
# Bytecode for every installed file, as pip would write it, but on every core (pip compiles one file at a time): the
# tests' processes need it (PYTHONDONTWRITEBYTECODE may be set, and each would compile TensorFlow anew). A file that
# does not compile (a package's Python 2 test data) is skipped, as pip skips it.
.venv/bin/python -m pip install -q --no-compile -e ".[test,docs]"
.venv/bin/python -m compileall -q -j 0 "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" >/dev/null || true
# Debian packages the tests use: Chromium (the browser test), PostgreSQL (the tracking server's tests), iproute2
# (network namespaces for the multi-machine tests); installed with apt only when missing.
APT=()
[ -x "${MNIST_EXP_CHROMIUM:-/usr/bin/chromium}" ] || APT+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || APT+=(postgresql)
command -v ip >/dev/null || [ -x /usr/sbin/ip ] || APT+=(iproute2)
if [ ${#APT[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${APT[@]}" >/dev/null
fi
.venv/bin/ruff check --quiet mnist_exp tests scripts benchmarks docs/hooks
.venv/bin/lint-imports --no-cache >/dev/null || .venv/bin/lint-imports --no-cache  # quiet unless a contract breaks
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
exec .venv/bin/python -m pytest "$@"
