"""Number formats (docs/ARITHMETIC.md §1): code ranges, power and uniform formats.

Encoding of real values happens on the host in float64 (reference, tests); the
simulator consumes integer codes only.
"""

from dataclasses import dataclass, field

import numpy as np

from .rounding import DEFAULT, round_float
from .validate import check_choice, check_finite_positive, check_int, check_int_array, check_real

GRANULARITIES = ("tensor", "channel", "group")
EXPONENT_MIN, EXPONENT_MAX = 1e-3, 16.0


def check_full_range(full_range, signed):
    """full_range is a bool, and True only for signed codes (unsigned codes use all 2^b)."""
    if not isinstance(full_range, (bool, np.bool_)):
        raise TypeError(f"full_range must be a bool, got {full_range!r} ({type(full_range).__name__})")
    if full_range and not signed:
        raise ValueError(
            "full_range=True is not allowed with signed=False; allowed: full_range=True with "
            "signed codes only (unsigned codes [0, 2^b-1] already use all 2^b levels)"
        )


@dataclass(frozen=True)
class CodeRange:
    """b-bit codes: signed symmetric [-M, M], M = 2^(b-1)-1, signed full [-2^(b-1), M]
    (`full_range`: all 2^b levels, as int-b), or unsigned [0, 2^b-1]."""

    bits: int
    signed: bool
    full_range: bool = False

    def __post_init__(self):
        check_int("bits", self.bits, 2, 8)
        if not isinstance(self.signed, (bool, np.bool_)):
            raise TypeError(f"signed must be a bool, got {self.signed!r}")
        check_full_range(self.full_range, self.signed)
        object.__setattr__(self, "full_range", bool(self.full_range))

    @property
    def qmin(self):
        if not self.signed:
            return 0
        return -(2 ** (self.bits - 1)) if self.full_range else -(2 ** (self.bits - 1) - 1)

    @property
    def qmax(self):
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def n_codes(self):
        return self.qmax - self.qmin + 1

    @property
    def max_magnitude(self):
        return max(-self.qmin, self.qmax)

    def all_codes(self):
        return np.arange(self.qmin, self.qmax + 1, dtype=np.int64)

    def check_codes(self, name, codes):
        return check_int_array(name, codes, self.qmin, self.qmax)


@dataclass(frozen=True, eq=False)
class PowerFormat:
    """Power format: q = clip(round(sign(x)|x|^a / s)), x̂ = sign(q)(s|q|)^(1/a).

    scale has one entry ('tensor'), one per output channel ('channel', dim 0), or one per
    (channel, group of group_size consecutive input elements) ('group', shape (C, K/g)).
    Signed codes are [-M, M] (M = 2^(b-1)-1), or [-2^(b-1), M] with full_range=True.
    """

    bits: int
    signed: bool
    exponent: float
    scale: np.ndarray
    granularity: str = "tensor"
    group_size: int = 0
    full_range: bool = False
    range: CodeRange = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "range", CodeRange(self.bits, self.signed, self.full_range))
        object.__setattr__(self, "full_range", bool(self.full_range))
        object.__setattr__(
            self, "exponent", check_real("exponent", self.exponent, EXPONENT_MIN, EXPONENT_MAX)
        )
        check_choice("granularity", self.granularity, GRANULARITIES)
        s = check_finite_positive("scale", self.scale)
        if self.granularity == "tensor":
            if s.size != 1:
                raise ValueError(f"scale must have 1 entry for granularity='tensor', got shape {s.shape}")
            s = s.reshape(1)
        elif self.granularity == "channel":
            s = s.reshape(-1)
        else:
            check_int("group_size", self.group_size, 1, None)
            if s.ndim != 2:
                raise ValueError(
                    f"scale must be 2-D (channels, groups) for granularity='group', got shape {s.shape}"
                )
        s = s.copy()
        s.setflags(write=False)
        object.__setattr__(self, "scale", s)

    def scale_index(self, shape):
        """Per-element index into scale.reshape(-1) for a weight of shape (C, K...)."""
        C = shape[0]
        K = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        if self.granularity == "tensor":
            return np.zeros((C, K), np.int64)
        if self.scale.shape[0] != C:
            raise ValueError(f"scale has {self.scale.shape[0]} channels but the tensor has {C}")
        if self.granularity == "channel":
            return np.repeat(np.arange(C, dtype=np.int64)[:, None], K, axis=1)
        g = self.group_size
        if K % g or self.scale.shape[1] != K // g:
            raise ValueError(
                f"group_size={g} and scale shape {self.scale.shape} do not fit K={K} input elements"
            )
        return np.arange(C, dtype=np.int64)[:, None] * (K // g) + (np.arange(K, dtype=np.int64) // g)[None, :]

    def decode_real(self, codes, scale_index=None):
        """Float64 x̂ = sign(q)(s|q|)^(1/a) (host only)."""
        q = np.asarray(codes, dtype=np.float64)
        s = self.scale.reshape(-1)[scale_index] if scale_index is not None else self.scale.reshape(-1)[0]
        return np.sign(q) * (s * np.abs(q)) ** (1.0 / self.exponent)

    def encode(self, x, rounding=DEFAULT, seed=0, tensor_id=0):
        """Float64 codes of real x (host only): clip(round(sign(x)|x|^a/s), qmin, qmax)."""
        x = np.asarray(x, dtype=np.float64)
        if not np.isfinite(x).all():
            raise ValueError("cannot encode non-finite values")
        q = round_float(self.scaled(x), rounding, seed, tensor_id)
        return np.clip(q, self.range.qmin, self.range.qmax)

    def scaled(self, x):
        """The value encode rounds: sign(x)|x|^a / s (float64 x; cpu/fakequant.py reuses it)."""
        if self.granularity == "tensor":
            s = self.scale[0]
        else:
            idx = self.scale_index(x.shape).reshape(x.shape)
            s = self.scale.reshape(-1)[idx]
        return np.sign(x) * np.abs(x) ** self.exponent / s


@dataclass(frozen=True, eq=False)
class UniformFormat:
    """Affine uniform format (weight-only mode activations): x = scale·(q − zero_point)."""

    bits: int
    signed: bool
    scale: float
    zero_point: int = 0
    range: CodeRange = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "range", UniformRange(self.bits, self.signed))
        object.__setattr__(self, "scale", float(check_finite_positive("scale", self.scale)))
        check_int("zero_point", self.zero_point, self.range.qmin, self.range.qmax)

    def decode_real(self, codes, scale_index=None):
        return self.scale * (np.asarray(codes, dtype=np.float64) - self.zero_point)

    def encode(self, x, rounding=DEFAULT, seed=0, tensor_id=0):
        x = np.asarray(x, dtype=np.float64)
        q = round_float(x / self.scale, rounding, seed, tensor_id) + self.zero_point
        return np.clip(q, self.range.qmin, self.range.qmax)


@dataclass(frozen=True)
class UniformRange(CodeRange):
    """Uniform int codes use the full two's complement range [-2^(b-1), 2^(b-1)-1] (always:
    `full_range` is a power-format option; the class tells uniform codes apart)."""

    @property
    def qmin(self):
        return -(2 ** (self.bits - 1)) if self.signed else 0


WEIGHT_GRANULARITIES = ("tensor", "channel")


@dataclass(frozen=True, eq=False)
class UniformWeightFormat:
    """Affine uniform weights with a zero point per scale entry: ŵ = s_t·(q − z_t)
    (docs/ARITHMETIC.md §1), e.g. GPTQ's standard asymmetric min-max grid (unsigned codes
    [0, 2^b-1], one scale and zero point per output channel).

    scale (float64 > 0) and zero_point (ints, each a code of the range) have one entry
    ('tensor') or one per output channel ('channel', dim 0). On the operand datapath the
    decode LUT row t is (q − z_t)·2^F, exact, and s_t moves into the accumulator unit (§2).
    """

    bits: int
    signed: bool
    scale: np.ndarray
    zero_point: np.ndarray
    granularity: str = "channel"
    range: CodeRange = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "range", UniformRange(self.bits, self.signed))
        check_choice("granularity", self.granularity, WEIGHT_GRANULARITIES)
        s = check_finite_positive("scale", self.scale).reshape(-1).copy()
        zp = np.asarray(self.zero_point)
        if zp.dtype.kind not in "iu" and not (zp.dtype.kind == "f" and (zp == np.round(zp)).all()):
            raise TypeError(f"zero_point must hold integers, got dtype {zp.dtype}")
        zp = zp.astype(np.int64).reshape(-1).copy()
        check_int_array("zero_point", zp, self.range.qmin, self.range.qmax)
        if self.granularity == "tensor" and s.size != 1:
            raise ValueError(f"scale must have 1 entry for granularity='tensor', got {s.size}")
        if zp.shape != s.shape:
            raise ValueError(
                f"zero_point has {zp.size} entries and scale {s.size}; allowed: one zero point per scale"
            )
        for a in (s, zp):
            a.setflags(write=False)
        object.__setattr__(self, "scale", s)
        object.__setattr__(self, "zero_point", zp)

    def scale_index(self, shape):
        """Per-element index into scale for a weight of shape (C, K...)."""
        C = shape[0]
        K = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        if self.granularity == "tensor":
            return np.zeros((C, K), np.int64)
        if self.scale.size != C:
            raise ValueError(f"scale has {self.scale.size} channels but the tensor has {C}")
        return np.repeat(np.arange(C, dtype=np.int64)[:, None], K, axis=1)

    def decode_real(self, codes, scale_index=None):
        """Float64 ŵ = s·(q − z) (host only): one float64 product of exact operands."""
        q = np.asarray(codes, dtype=np.int64)
        t = 0 if scale_index is None else scale_index
        return self.scale[t] * (q - self.zero_point[t]).astype(np.float64)

    def encode(self, x, rounding=DEFAULT, seed=0, tensor_id=0):
        """Codes clip(R(x/s) + z, qmin, qmax) of a weight x of shape (C, K...) (host only)."""
        x = np.asarray(x, dtype=np.float64)
        idx = self.scale_index(x.shape).reshape(x.shape)
        q = round_float(x / self.scale[idx], rounding, seed, tensor_id) + self.zero_point[idx]
        return np.clip(q, self.range.qmin, self.range.qmax)


@dataclass(frozen=True, eq=False)
class CodebookFormat:
    """Codebook weights: unsigned b-bit codes q index a table of 2^b real values,
    ŵ = values[t, q] (docs/ARITHMETIC.md §1), e.g. NF4 (absmax·NF values per group) or
    k-means centroids per channel. Codes are unsigned [0, 2^b-1]: an index has no sign, and
    all 2^b entries are levels.

    values (finite float64) has shape (1, 2^b) or (2^b,) ('tensor'), (C, 2^b) ('channel',
    one table per output channel) or (C, K/g, 2^b) ('group', one per (channel, group of
    group_size consecutive input elements)). On the operand datapath the decode LUT row t is
    R(values[t, q]·2^F), rounded like a power format's entries (§2).
    """

    bits: int
    values: np.ndarray
    granularity: str = "channel"
    group_size: int = 0
    range: CodeRange = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "range", CodeRange(self.bits, False))
        check_choice("granularity", self.granularity, GRANULARITIES)
        v = np.asarray(self.values)
        if v.dtype.kind not in "fiu":
            raise TypeError(f"values must hold real numbers, got dtype {v.dtype}")
        v = v.astype(np.float64)
        n = self.range.n_codes
        if v.ndim == 0 or v.shape[-1] != n:
            raise ValueError(
                f"values has {v.shape[-1] if v.ndim else 0} entries per table (shape {v.shape}); "
                f"allowed: 2^bits = {n} values per table"
            )
        if not np.isfinite(v).all():
            bad = v[~np.isfinite(v)].reshape(-1)[0]
            raise ValueError(f"values contains {bad}; allowed: finite values only")
        if self.granularity == "tensor" and v.ndim == 1:
            v = v.reshape(1, n)
        ndim = 3 if self.granularity == "group" else 2
        if v.ndim != ndim or (self.granularity == "tensor" and v.shape[0] != 1):
            need = {"tensor": f"(1, {n})", "channel": f"(C, {n})", "group": f"(C, K/g, {n})"}
            raise ValueError(
                f"values has shape {v.shape}; allowed for granularity={self.granularity!r}: "
                f"{need[self.granularity]}"
            )
        if self.granularity == "group":
            check_int("group_size", self.group_size, 1, None)
        v = v.copy()
        v.setflags(write=False)
        object.__setattr__(self, "values", v)

    @property
    def tables(self):
        """(T, 2^b) float64: one table per LUT row t (row-major over channel, group)."""
        return self.values.reshape(-1, self.range.n_codes)

    def scale_index(self, shape):
        """Per-element table row t(o, k) for a weight of shape (C, K...) (as PowerFormat's)."""
        C = shape[0]
        K = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        if self.granularity == "tensor":
            return np.zeros((C, K), np.int64)
        if self.values.shape[0] != C:
            raise ValueError(
                f"values has {self.values.shape[0]} channel tables but the tensor has {C} channels"
            )
        if self.granularity == "channel":
            return np.repeat(np.arange(C, dtype=np.int64)[:, None], K, axis=1)
        g, G = self.group_size, self.values.shape[1]
        if K % g or G != K // g:
            raise ValueError(
                f"group_size={g} and values shape {self.values.shape} do not fit K={K} input elements"
            )
        return np.arange(C, dtype=np.int64)[:, None] * G + (np.arange(K, dtype=np.int64) // g)[None, :]

    def decode_real(self, codes, scale_index=None):
        """Float64 ŵ = values[t, q] (host only; exact: a table read)."""
        q = np.asarray(codes, dtype=np.int64)
        t = 0 if scale_index is None else scale_index
        return self.tables[t, q]

    def encode(self, x, rounding=DEFAULT, seed=0, tensor_id=0):
        """Codes of the nearest table value to each weight of x (C, K...) (host only; ties go to
        the lower code; `rounding` is unused: nearest is the only choice for a codebook)."""
        x = np.asarray(x, dtype=np.float64)
        if not np.isfinite(x).all():
            raise ValueError("cannot encode non-finite values")
        idx = self.scale_index(x.shape).reshape(x.shape)
        d = np.abs(x[..., None] - self.tables[idx])
        return np.argmin(d, axis=-1).astype(np.int64)
