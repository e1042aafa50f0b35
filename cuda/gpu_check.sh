#!/usr/bin/env bash
# One-shot check of the cuda backend on a GPU machine (see cuda/README.md).
#
#   bash cuda/gpu_check.sh          # from the repository root; log in $OUT/gpu_check.log
#
# Runs tests/cuda on the hardware (no simulator; NUPES_REQUIRE_CUDA=1 so "no GPU" fails), then
# the GPU benchmark, whatever the tests gave. Exit status: 0 only if everything passed.
# Budget: < 4 minutes in all (each step under `timeout`).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
exec > >(tee "$LOG") 2>&1
PY="${PYTHON:-python3}"
T0=$(date +%s)
FAIL=0
step() { echo; echo "=== $* ($(( $(date +%s) - T0 )) s)"; }

step "versions"
$PY --version
$PY - <<'EOF'
import importlib, importlib.metadata as md
for d in ("numpy", "numba", "numba-cuda", "cuda-bindings", "cuda-core", "torch", "setuptools", "pytest"):
    try:
        print(f"{d:14s} {md.version(d)}")
    except Exception as e:
        print(f"{d:14s} -- {type(e).__name__}")
EOF
nvidia-smi || echo "nvidia-smi failed"
# GPU_CHECK_SIM=1: local dry run of this script under the CUDA simulator (small bench, no
# NUPES_REQUIRE_CUDA). GPU_CHECK_FORCE_LINKS=1: exercise the symlink fallback below.
REQ=1; QUICK=""
if [ "${GPU_CHECK_SIM:-0}" = 1 ]; then export NUMBA_ENABLE_CUDASIM=1; REQ=0; QUICK="--quick --reps 1";
else unset NUMBA_ENABLE_CUDASIM; fi

step "nupes_sim.cuda import path"
# nupes_sim.cuda is the folder cuda/ only through the package mapping of pyproject.toml:
# install the checkout in editable mode (no deps, no build isolation, nothing downloaded).
if [ "${GPU_CHECK_FORCE_LINKS:-0}" = 1 ]; then :
elif ! $PY -m pip install -q --no-deps --no-build-isolation -e . 2>"$OUT/pip.err"; then
  if grep -q externally-managed "$OUT/pip.err"; then
    $PY -m pip install -q --no-deps --no-build-isolation --break-system-packages -e . || true
  else
    cat "$OUT/pip.err"
  fi
fi
if [ "${GPU_CHECK_FORCE_LINKS:-0}" = 1 ] || ! $PY -c "import nupes_sim.cuda" 2>/dev/null; then
  # fallback: a symlinked package tree that maps nupes_sim.cuda -> cuda/ (and
  # nupes_sim.reference -> reference/); Python then runs with -P so the root's own
  # nupes_sim (which lacks the mapping) does not come first on sys.path.
  echo "editable install unavailable: using a symlinked package tree"
  PKG=/tmp/nupes_pkg; rm -rf "$PKG"; mkdir -p "$PKG/nupes_sim"
  for f in nupes_sim/*; do ln -s "$PWD/$f" "$PKG/nupes_sim/"; done
  ln -s "$PWD/cuda" "$PKG/nupes_sim/cuda"; ln -s "$PWD/reference" "$PKG/nupes_sim/reference"
  export PYTHONPATH="$PKG${PYTHONPATH:+:$PYTHONPATH}"
  PY="$PY -P"
fi

step "numpy / numba-cuda import"
# Plan A: cuda/_compat.py re-adds np.row_stack (removed in NumPy 2.5) before numba.cuda is
# imported. Plan B, if that still fails: the NumPy 2.4.6 wheel carried in .whl/, installed to
# /tmp/site, first on the path.
if ! $PY -c "import nupes_sim.cuda.kernels as k; from nupes_sim.cuda import _compat as c; print('numba.cuda ok; row_stack shim applied:', c.ROW_STACK_SHIM)"; then
  WHL=$(ls .whl/numpy-2.4.6-cp312-*.whl 2>/dev/null | head -1)
  if [ -n "$WHL" ]; then
    echo "plan B: installing $WHL to /tmp/site"
    $PY -m pip install -q --no-deps --no-index --target /tmp/site "$WHL" && \
      export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    $PY -c "import numpy, nupes_sim.cuda.kernels; print('numba.cuda ok with numpy', numpy.__version__)" || FAIL=1
  else
    echo "plan B unavailable: no .whl/numpy-2.4.6-cp312-*.whl carried"; FAIL=1
  fi
fi

step "tests/cuda on the GPU (NUPES_REQUIRE_CUDA=1)"
NUPES_REQUIRE_CUDA=$REQ timeout 130 $PY -m pytest -q -p no:cacheprovider tests/cuda --durations=10 \
  -o addopts="-ra" || { echo "TESTS FAILED (rc=$?)"; FAIL=1; }

step "GPU benchmark"
timeout 95 $PY -m nupes_sim.cuda.bench --reps 5 $QUICK || { echo "BENCH FAILED (rc=$?)"; FAIL=1; }

step "done: FAIL=$FAIL"
exit $FAIL
