"""numba.njit for the CPU kernels, with an on-disk cache that is never stale.

Compiling the kernels takes about 25 s per process; numba's own cache (``cache=True``) would
remove that, but it keys a cached kernel on the kernel's own source file only, while the
kernels inline the primitives of nupes_sim/primitives.py and read constants of their
modules: an edited primitive would be served stale. So every kernel is cached under

    <root>/<h>/...      h = SHA-256 of primitives.py, of every module of nupes_sim/cpu/ and
                        of the transformer kernel modules (TRANSFORMER_KERNELS)

computed once at import from the files' bytes (the cache index inside also keys on the
kernel's file, the signature, the numba version and the CPU, as numba does). Any edit of a
primitive or of a kernel module (CPU or transformer) changes h, so the old entries are never
looked at.

root: $NUPES_CACHE_DIR, else $XDG_CACHE_HOME/nupes-sim (default ~/.cache/nupes-sim);
NUPES_NUMBA_CACHE=0 turns the cache off (compile in every process, as numba does by default).
An unwritable root also leaves it off. Nothing here changes the environment or numba's
global configuration: the cache is attached to each kernel's dispatcher.
"""

import hashlib
import os
from pathlib import Path

from numba import njit

_PKG = Path(__file__).resolve().parent
# The transformer's cached kernels (transformer/cpu.py, cpu_matmul.py, thrsearch.py) and the
# scalar sources they compile in (bodies.py, prims.py); tests/test_kernel_cache.py checks that
# every module using jit.kernel is covered.
TRANSFORMER_KERNELS = ("bodies.py", "cpu.py", "cpu_matmul.py", "prims.py", "thrsearch.py")
SOURCES = (
    tuple(sorted(_PKG.glob("*.py")))
    + (_PKG.parent / "primitives.py",)
    + tuple(_PKG.parent / "transformer" / n for n in TRANSFORMER_KERNELS)
)


def source_hash(paths=SOURCES):
    """SHA-256 (hex, 16 digits) of the named source files' names and bytes."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode() + b"\0" + Path(p).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def cache_dir():
    """The directory of this source version's cached kernels, or None (cache off)."""
    if os.environ.get("NUPES_NUMBA_CACHE", "1").strip() in ("0", "", "off", "no", "false"):
        return None
    root = os.environ.get("NUPES_CACHE_DIR")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nupes-sim")
    path = Path(root) / f"numba-{source_hash()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):
            return None
    except OSError:
        return None
    return path


CACHE_DIR = cache_dir()
_FunctionCache = None
if CACHE_DIR is not None:
    try:
        from numba.core import caching as _c

        class _Locator(_c._SourceFileBackedLocatorMixin, _c._CacheLocator):
            """Cache files of one kernel module under CACHE_DIR/<module file name>."""

            def __init__(self, py_func, py_file):
                self._py_file = py_file
                self._lineno = py_func.__code__.co_firstlineno
                self._cache_path = str(CACHE_DIR / Path(py_file).stem)

            def get_cache_path(self):
                return self._cache_path

        class _Impl(_c.CompileResultCacheImpl):
            _locator_classes = [_Locator]

        class _FunctionCache(_c.FunctionCache):  # noqa: F811
            _impl_class = _Impl
    except (ImportError, AttributeError):  # a numba without these internals: no cache
        _FunctionCache = None


def kernel(fn=None, **options):
    """numba.njit(**options) (never fastmath), cached as described above when possible."""
    if "fastmath" in options or "cache" in options:
        raise ValueError("CPU kernels are never fastmath, and caching is decided here")

    def deco(f):
        d = njit(**options)(f)
        if _FunctionCache is not None:
            try:
                d._cache = _FunctionCache(d.py_func)
            except (RuntimeError, OSError):  # no usable cache path: compile as usual
                pass
        return d

    return deco(fn) if fn is not None else deco
