"""The power quantizer of the project contract (docs/ARITHMETIC.md §1), in torch and NumPy.

Encode ``q = clip(round(sign(w)·|w|^a / s), qmin, qmax)`` (round = half-to-even), decode
``ŵ = sign(q)·(s·|q|)^(1/a)``; ``a = 1`` is uniform symmetric RTN. Signed codes are
``[-M, M]``, ``M = 2^(b-1)-1``, or ``[-(M+1), M]`` with ``full_range`` (all 2^b levels, as
int-b); unsigned codes ``[0, 2^b-1]``. One scale per tensor, per
output channel (dim 0) or per group of ``group_size`` consecutive input elements (dim 1;
conv weights are flattened over dims 1.. in (C, kh, kw) order), shapes ``(1,)``, ``(C,)``
and ``(C, K/g)``. Default scale ``s = max|w|^a / D`` over the slice with ``D =
(qmax - qmin)/2`` for signed codes (``M``: the largest magnitude maps to the largest code;
full range ``M + 1/2``: ``±max|w|`` map to ``±(M + 1/2)``, the 2^b-level symmetric grid of the
GPTQ reference, ``scale = 2·max/(2^b - 1)`` at a = 1: a finer step than ``D = M``; RTN reaches
``-2^(b-1)`` only at that tie, GPTQ and NUPES wherever it lowers their objective) and
``D = qmax`` for unsigned codes; an all-zero slice gets ``s = 1`` (codes 0).

Exactness: the simulator's host side computes in float64 NumPy. Torch's vectorised ``pow``
differs from NumPy's by one ulp on a few percent of inputs, which would flip codes that sit
on a rounding boundary, so the torch path evaluates the one transcendental it needs,
``x^p`` for a scalar ``p``, with NumPy on the (detached, CPU) float64 data; everything else
(sign, division, half-even rounding, clipping, max) is torch arithmetic that is exact in
IEEE float64 and therefore agrees bit for bit with the NumPy path. These functions are not
differentiable; NUPES (``nupes.py``) has its own guarded differentiable decode.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch

from nupes_sim.formats import CodeRange, check_full_range
from nupes_sim.validate import check_choice, check_int, check_real

#: exponents accepted by the quantizer (validation range).
EXPONENT_MIN, EXPONENT_MAX = 0.05, 4.0
GRANULARITIES = ("tensor", "channel", "group")


def check_finite_tensor(name, t):
    """Raise ValueError naming `name` if a torch tensor or array holds NaN/Inf."""
    if torch.is_tensor(t):
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            i = int(torch.nonzero(bad.reshape(-1))[0])
            raise ValueError(
                f"{name} contains non-finite values ({t.reshape(-1)[i].item()!r} at flat index {i})"
            )
    else:
        a = np.asarray(t)
        bad = ~np.isfinite(a)
        if bad.any():
            i = int(np.flatnonzero(bad.reshape(-1))[0])
            raise ValueError(f"{name} contains non-finite values ({a.reshape(-1)[i]!r} at flat index {i})")
    return t


def _np_pow(x, p):
    """NumPy float64 x**p for a scalar p (the single pow kernel shared by both paths)."""
    with np.errstate(over="ignore", under="ignore"):  # out-of-range scales are reported by scales()
        return np.power(np.ascontiguousarray(x, dtype=np.float64), np.float64(p))


def _t_pow(x, p):
    return torch.from_numpy(_np_pow(x.detach().cpu().numpy(), p)).to(x.device)


@dataclass(frozen=True)
class PowerQuantizer:
    """Specification of a power format; see the module docstring.

    bits in [2, 8]; exponent in [EXPONENT_MIN, EXPONENT_MAX]; granularity one of
    'tensor', 'channel', 'group' (group_size > 0 required for 'group' and must divide the
    number of input elements of the tensor; ignored otherwise).
    """

    bits: int = 4
    signed: bool = True
    exponent: float = 1.0
    granularity: str = "channel"
    group_size: int = None
    full_range: bool = False

    def __post_init__(self):
        check_int("bits", self.bits, 2, 8)
        if not isinstance(self.signed, (bool, np.bool_)):
            raise TypeError(f"signed must be a bool, got {self.signed!r}")
        check_full_range(self.full_range, self.signed)
        object.__setattr__(self, "full_range", bool(self.full_range))
        if isinstance(self.exponent, bool):
            raise TypeError(f"exponent must be a real number, got {self.exponent!r}")
        object.__setattr__(
            self, "exponent", check_real("exponent", self.exponent, EXPONENT_MIN, EXPONENT_MAX)
        )
        check_choice("granularity", self.granularity, GRANULARITIES)
        if self.granularity == "group":
            if self.group_size is None:
                raise ValueError("group_size is required for granularity='group'; allowed: integer >= 1")
            check_int("group_size", self.group_size, 1, None)
        elif self.group_size not in (None, 0):
            raise ValueError(
                f"group_size={self.group_size!r} is only allowed with granularity='group' "
                f"(granularity={self.granularity!r})"
            )

    # ---- code range -------------------------------------------------------------------
    @property
    def qmin(self):  # the simulator's code range is the one definition (formats.CodeRange)
        return CodeRange(self.bits, self.signed, self.full_range).qmin

    @property
    def qmax(self):
        return CodeRange(self.bits, self.signed, self.full_range).qmax

    @property
    def divisor(self):
        """D of the default scale max|w|^a / D (module doc): (qmax - qmin)/2 signed, qmax unsigned."""
        return (self.qmax - self.qmin) / 2 if self.signed else float(self.qmax)

    def with_exponent(self, exponent):
        return PowerQuantizer(
            self.bits, self.signed, exponent, self.granularity, self.group_size, self.full_range
        )

    # ---- shapes -------------------------------------------------------------------------
    def blocks_shape(self, shape):
        """(R, G, g): the tensor viewed so that one scale covers one (r, j, :) slice."""
        shape = tuple(int(d) for d in shape)
        n = int(np.prod(shape)) if shape else 1
        if self.granularity == "tensor":
            return (1, 1, n)
        if len(shape) == 0:
            raise ValueError(
                f"granularity={self.granularity!r} needs a tensor with a channel dim, got a scalar"
            )
        C = shape[0]
        K = n // C if C else 0
        if self.granularity == "channel":
            return (C, 1, K)
        if len(shape) < 2:
            raise ValueError(f"granularity='group' needs a tensor with >= 2 dims, got shape {shape}")
        g = self.group_size
        if K % g:
            raise ValueError(
                f"group_size={g} does not divide the {K} input elements of shape {shape}; "
                f"allowed: a divisor of {K}"
            )
        return (C, K // g, g)

    def scales_shape(self, shape):
        R, G, _ = self.blocks_shape(shape)
        return {"tensor": (1,), "channel": (R,), "group": (R, G)}[self.granularity]

    def _check_w(self, w, name):
        if not (torch.is_tensor(w) or isinstance(w, np.ndarray)):
            raise TypeError(f"{name} must be a torch tensor or numpy array, got {type(w).__name__}")
        if (w.dtype.is_complex if torch.is_tensor(w) else w.dtype.kind == "c") or (
            not torch.is_tensor(w) and w.dtype.kind not in "fiub"
        ):
            raise TypeError(f"{name} must be real, got dtype {w.dtype}")
        check_finite_tensor(name, w)

    def _check_scales(self, s, shape, name="scales"):
        want = self.scales_shape(shape)
        if tuple(s.shape) != want and int(np.prod(s.shape)) == int(np.prod(want)):
            s = s.reshape(want)
        if tuple(s.shape) != want:
            raise ValueError(
                f"{name} has shape {tuple(s.shape)}; expected {want} for {self.granularity} "
                f"granularity of a tensor of shape {tuple(shape)}"
            )
        bad = ~(s > 0) | ~(torch.isfinite(s) if torch.is_tensor(s) else np.isfinite(s))
        if bool(bad.any()):
            raise ValueError(f"{name} must be finite and > 0")
        return s

    # ---- torch --------------------------------------------------------------------------
    def scales(self, w, name="w"):
        """Default scales (float64 torch): max|w|^a / D per slice, 1 for all-zero slices."""
        if not torch.is_tensor(w):
            raise TypeError(f"{name} must be a torch tensor; use scales_np for numpy arrays")
        self._check_w(w, name)
        R, G, g = self.blocks_shape(w.shape)
        m = (
            w.detach().to(torch.float64).reshape(R, G, g).abs().amax(dim=2)
            if g
            else torch.zeros(R, G, dtype=torch.float64)
        )
        s = _t_pow(m, self.exponent) / self.divisor
        s = torch.where(m > 0, s, torch.ones_like(s))
        self._check_representable(m.numpy(), s.numpy(), name)
        return s.reshape(self.scales_shape(w.shape))

    def _check_representable(self, m, s, name):
        bad = (m > 0) & ~((s > 0) & np.isfinite(s))
        if bad.any():
            v = float(m[bad].reshape(-1)[0])
            raise ValueError(
                f"{name}: max|w|^a / D = {v!r}^{self.exponent} / {self.divisor} is not a finite "
                f"positive float64 (under/overflow); rescale the tensor or use an exponent closer to 1"
            )

    def _bscale_t(self, s, shape):
        R, G, g = self.blocks_shape(shape)
        return s.to(torch.float64).reshape(R, G, 1)

    def encode(self, w, scales=None, name="w"):
        """int64 codes (torch) of w with the given (or default) scales."""
        return self.encode_float(w, scales, name).to(torch.int64)

    def encode_float(self, w, scales=None, name="w"):
        self._check_w(w, name)
        s = self.scales(w, name) if scales is None else self._check_scales(torch.as_tensor(scales), w.shape)
        R, G, g = self.blocks_shape(w.shape)
        x = w.detach().to(torch.float64).reshape(R, G, g)
        z = torch.sign(x) * _t_pow(x.abs(), self.exponent) / self._bscale_t(s, w.shape)
        return torch.clamp(torch.round(z), self.qmin, self.qmax).reshape(w.shape)

    def decode(self, q, scales):
        """float64 ŵ = sign(q)·(s|q|)^(1/a) (torch)."""
        qf = torch.as_tensor(q).to(torch.float64)
        s = self._check_scales(torch.as_tensor(scales), qf.shape)
        R, G, g = self.blocks_shape(qf.shape)
        qb = qf.reshape(R, G, g)
        y = torch.sign(qb) * _t_pow(self._bscale_t(s, qf.shape) * qb.abs(), 1.0 / self.exponent)
        return y.reshape(qf.shape)

    def fake_quant(self, w, scales=None, name="w"):
        s = self.scales(w, name) if scales is None else scales
        return self.decode(self.encode_float(w, s, name), s)

    # ---- numpy float64 ------------------------------------------------------------------
    def scales_np(self, w, name="w"):
        w = np.asarray(w)
        self._check_w(w, name)
        R, G, g = self.blocks_shape(w.shape)
        m = np.abs(w.astype(np.float64).reshape(R, G, g)).max(axis=2) if g else np.zeros((R, G))
        s = _np_pow(m, self.exponent) / self.divisor
        s = np.where(m > 0, s, 1.0)
        self._check_representable(m, s, name)
        return s.reshape(self.scales_shape(w.shape))

    def encode_np(self, w, scales=None, name="w"):
        """int64 codes (numpy float64 arithmetic)."""
        w = np.asarray(w)
        self._check_w(w, name)
        s = (
            self.scales_np(w, name)
            if scales is None
            else self._check_scales(np.asarray(scales, np.float64), w.shape)
        )
        R, G, g = self.blocks_shape(w.shape)
        x = w.astype(np.float64).reshape(R, G, g)
        z = np.sign(x) * _np_pow(np.abs(x), self.exponent) / s.reshape(R, G, 1)
        return np.clip(np.round(z), self.qmin, self.qmax).astype(np.int64).reshape(w.shape)

    def decode_np(self, q, scales):
        q = np.asarray(q, dtype=np.float64)
        s = self._check_scales(np.asarray(scales, np.float64), q.shape)
        R, G, g = self.blocks_shape(q.shape)
        qb = q.reshape(R, G, g)
        return (np.sign(qb) * _np_pow(s.reshape(R, G, 1) * np.abs(qb), 1.0 / self.exponent)).reshape(q.shape)

    def fake_quant_np(self, w, scales=None, name="w"):
        s = self.scales_np(w, name) if scales is None else scales
        return self.decode_np(self.encode_np(w, s, name), s)


@dataclass
class QuantizedWeight:
    """What an exporter needs from a quantized layer (attached as `module.nupes_quant`).

    codes: int8 tensor of the weight's shape; scales: float64 tensor of shape (1,), (C,) or
    (C, K/g); exponent a; bits; granularity; group_size (0 unless 'group'); method name.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    exponent: float
    bits: int
    granularity: str
    group_size: int
    method: str
    signed: bool = True
    full_range: bool = False

    @property
    def quantizer(self):
        return PowerQuantizer(
            self.bits,
            self.signed,
            self.exponent,
            self.granularity,
            self.group_size if self.granularity == "group" else None,
            self.full_range,
        )

    def decode(self):
        """Float64 fake-quantized weight (exact contract decode)."""
        return self.quantizer.decode(self.codes, self.scales)

    @staticmethod
    def from_codes(q, codes, scales, method):
        codes = torch.as_tensor(codes)
        if codes.numel() and (int(codes.min()) < q.qmin or int(codes.max()) > q.qmax):
            raise ValueError(f"codes outside [{q.qmin}, {q.qmax}]")
        dt = torch.int8 if q.signed else torch.uint8
        return QuantizedWeight(
            codes.to(torch.int64).to(dt),
            torch.as_tensor(scales, dtype=torch.float64).clone(),
            float(q.exponent),
            q.bits,
            q.granularity,
            int(q.group_size or 0) if q.granularity == "group" else 0,
            method,
            q.signed,
            q.full_range,
        )


def as_matrix(w):
    """(C, K) view of a weight (conv: flattened over (C_in, kh, kw))."""
    return w.reshape(w.shape[0], -1) if w.dim() > 1 else w.reshape(-1, 1)


def is_finite_number(x):
    return isinstance(x, (int, float)) and math.isfinite(x)
