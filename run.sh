#!/usr/bin/env bash
# One entry point that works on a fresh machine: makes .venv, installs torch only where none is
# importable (a CUDA machine keeps its own), builds and installs obd-fast with its test extras,
# then runs the demo, the tests or the benchmarks.
#
#   ./run.sh demo        the main job on the bundled default
#   ./run.sh test        the test suite (slow end-to-end runs excluded; ./run.sh test -m slow runs them)
#   ./run.sh bench       the CPU benchmarks (pytest-benchmark), ratios printed at the end
#   ./run.sh setup       only install
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=${OBD_FAST_VENV:-.venv}

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    # --system-site-packages lets a machine's own (CUDA) torch be used as it is.
    "$PYTHON" -m venv --system-site-packages "$VENV"
  fi
  local py="$VENV/bin/python"
  if ! "$py" -c "import torch" >/dev/null 2>&1; then
    "$py" -m pip install -q "torch==2.13.0"
  fi
  # (Re)install when nothing is installed yet, or the dependencies or C++/CUDA sources changed
  # since the last install (stamp file), or OBD_FAST_REBUILD is set.
  local stamp="$VENV/.obd-fast-installed"
  if [ ! -f "$stamp" ] || [ -n "${OBD_FAST_REBUILD:-}" ] \
     || [ -n "$(find pyproject.toml setup.py csrc -newer "$stamp" -print -quit)" ]; then
    "$py" -m pip install -q setuptools wheel ninja
    # No build isolation: the extension must be built against the torch installed here.
    "$py" -m pip install -q --no-build-isolation -e ".[test]"
    touch "$stamp"
  fi
}

cmd=${1:-test}
shift || true
setup
case "$cmd" in
  setup) ;;
  demo) exec "$VENV/bin/obd-fast" demo "$@" ;;
  test) exec "$VENV/bin/python" -m pytest -q "$@" ;;
  bench)
    "$VENV/bin/python" -c "import matplotlib" >/dev/null 2>&1 || "$VENV/bin/python" -m pip install -q ".[bench]"
    exec "$VENV/bin/python" -m pytest benchmarks -q -o addopts="" "$@" ;;
  *) echo "usage: ./run.sh {demo|test|bench|setup} [args...]" >&2; exit 2 ;;
esac
