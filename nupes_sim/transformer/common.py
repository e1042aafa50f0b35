"""What the transformer layer types share: per-tensor requantizer checks and builders, the
token-index range an Embedding reads, and the feeding description of layout ops."""

from dataclasses import dataclass

from ..formats import UniformFormat
from ..layers import Accumulator, build_requant, maxabs
from ..tables import Rescale, Thresholds, rescale_table

I62 = 2**62
I63 = 2**63 - 1


def check_requant(name, rq):
    """A per-tensor Thresholds (one row), Rescale (one multiplier) or None."""
    if rq is not None and not isinstance(rq, (Thresholds, Rescale)):
        raise TypeError(f"{name}: requant must be Thresholds, Rescale or None, got {type(rq).__name__}")
    if isinstance(rq, Thresholds) and rq.thr.shape[0] != 1:
        raise ValueError(
            f"{name}: a transformer op's thresholds have one row (per tensor), got {rq.thr.shape[0]}"
        )
    if isinstance(rq, Rescale) and rq.multiplier.shape[0] != 1:
        raise ValueError(
            f"{name}: a transformer op's rescale has one multiplier, got {rq.multiplier.shape[0]}"
        )


def check_rescale_input(name, rq, limit):
    if isinstance(rq, Rescale) and limit * int(rq.multiplier[0]) >= I62:
        raise ValueError(
            f"{name}: rescale needs |value|·multiplier < 2^62 but |value| can reach {limit}; lower mult_bits"
        )


def requant_for(unit, out_fmt, bound, rounding, mult_bits=31):
    """Thresholds (power output) or rescale (uniform output) of a value |v| <= bound (exact)."""
    if out_fmt is None:
        return None
    width = max(8, min(64, int(bound).bit_length() + 1))
    if isinstance(out_fmt, UniformFormat):
        return rescale_table(unit, out_fmt, width, min(mult_bits, 63 - width), rounding)
    return build_requant(unit, out_fmt, Accumulator(64, "exact"), rounding)


def requant_out_range(rq, lo, hi):
    """(lo, hi) of a requantized stage: the code range, or (lo, hi) when there is no requantizer."""
    return (int(rq.qmin), int(rq.qmax)) if rq is not None else (int(lo), int(hi))


@dataclass(frozen=True)
class IndexRange:
    """Token indices 0..n-1 an Embedding reads (the graph input of a language model); has the
    qmin/qmax of a CodeRange, which is all that input ranges are asked for."""

    n: int

    @property
    def qmin(self):
        return 0

    @property
    def qmax(self):
        return self.n - 1

    @property
    def n_codes(self):
        return self.n

    @property
    def bits(self):
        return max(1, (self.n - 1).bit_length())

    @property
    def signed(self):
        return False


def read_only(a):
    a.setflags(write=False)
    return a


def source_feeding(x, name, src):
    """Feeding of an element copied from input element `src` (a multi-index)."""
    src = tuple(int(v) for v in src)
    return dict(input=name, source_index=list(src), source_value=int(x[src]))


__all__ = [
    "I62",
    "I63",
    "maxabs",
    "check_requant",
    "check_rescale_input",
    "requant_for",
    "requant_out_range",
    "IndexRange",
    "source_feeding",
    "read_only",
]
