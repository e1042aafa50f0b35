"""Per-call options of the CPU backend (no module-level knobs) and its path counters.

``CpuOptions`` is frozen: pass one to ``run_layer(layer, *inputs, options=...)`` or
``Graph.run(x, backend="cpu", options=...)``; ``DEFAULT`` is what a plain call uses. The
options choose among exact paths only (each has its proof next to its code): results never
depend on them, and the tests run every combination against the oracle.
"""

from dataclasses import dataclass, replace

F24, F53 = 2**24, 2**53  # float32 / float64 significands: integers below these are exact


@dataclass(frozen=True)
class CpuOptions:
    """fast: the BLAS paths (False: every MAC through the integer kernels, for cross-checks).
    fused: the fused exact-float path for linear/conv (False: the older per-call GEMM paths).
    use_float32: float32 GEMMs where every partial sum is < chunk_limit_f32.
    one_hot: product datapath side of the one-hot decomposition (None: the cheaper one,
        "weights" or "activations").
    product_gemm_max: at most this many GEMM columns per k in a product decomposition, else
        the integer gather kernel.
    f32_max_chunks: more float32 k-chunks than this: float64 (fewer, larger GEMMs).
    chunk_limit_f32, chunk_limit_f64: bound L on every GEMM partial sum (<= 2^24, 2^53; tests
        lower them to force many chunks).
    feature_bytes: im2col / feature row blocks of about this size per worker task.
    product_check_max: largest host identity check (activation codes x weight keys) of a
        product decomposition.
    int8: the exact int8-limb GEMM path of the fused path (cpu/intmm.py): None (default) by
        its rule (limb pairs <= int8_max_pairs), True wherever its proof applies, False never.
    int8_max_pairs: the automatic rule's largest number of limb pairs (GEMMs per chunk).
    int8_max_conv: for conv, the automatic rule's largest limb pairs x one-hot columns.
    int8_chunk_k: k-chunk of the int8 GEMMs (<= 2^16, claim (I); tests lower it).
    cache_plans: keep the fused path's weight-side plans per layer object (cpu/plancache.py:
        valid while the layer's arrays stay read-only); False builds them at every call."""

    fast: bool = True
    fused: bool = True
    use_float32: bool = True
    one_hot: str | None = None
    product_gemm_max: int = 16
    f32_max_chunks: int = 24
    chunk_limit_f32: int = F24
    chunk_limit_f64: int = F53
    feature_bytes: int = 4 << 20
    product_check_max: int = 1 << 22
    int8: bool | None = None
    int8_max_pairs: int = 9
    int8_max_conv: int = 4
    int8_chunk_k: int = 1 << 16
    cache_plans: bool = True

    def __post_init__(self):
        for name in ("fast", "fused", "use_float32", "cache_plans"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"CpuOptions.{name} must be a bool, got {getattr(self, name)!r}")
        if self.int8 is not None and not isinstance(self.int8, bool):
            raise TypeError(f"CpuOptions.int8 must be None, True or False, got {self.int8!r}")
        if self.one_hot not in (None, "weights", "activations"):
            raise ValueError(f"CpuOptions.one_hot={self.one_hot!r}; allowed: None, 'weights', 'activations'")
        for name, lo, hi in (
            ("product_gemm_max", 1, None),
            ("f32_max_chunks", 1, None),
            ("chunk_limit_f32", 2, F24),
            ("chunk_limit_f64", 2, F53),
            ("feature_bytes", 1, None),
            ("product_check_max", 1, None),
            ("int8_max_pairs", 1, None),
            ("int8_max_conv", 1, None),
            ("int8_chunk_k", 1, 1 << 16),
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
                allowed = f"an integer in [{lo}, {hi}]" if hi else f"an integer >= {lo}"
                raise ValueError(
                    f"CpuOptions.{name}={v!r}; allowed: {allowed} (larger limits would not be exact)"
                    if hi
                    else f"CpuOptions.{name}={v!r}; allowed: {allowed}"
                )

    def with_(self, **changes):
        return replace(self, **changes)


DEFAULT = CpuOptions()


def resolve(options=None, fast=None):
    """The options of one call: `options` (default DEFAULT), with `fast` overriding its flag."""
    if options is None:
        options = DEFAULT
    elif not isinstance(options, CpuOptions):
        raise TypeError(f"options must be a nupes_sim.cpu.CpuOptions, got {type(options).__name__}")
    return options if fast is None or bool(fast) == options.fast else replace(options, fast=bool(fast))


STATS = {}  # name of the path taken -> count (tests and the bench read it; never read by the code)


def note(path):
    STATS[path] = STATS.get(path, 0) + 1
