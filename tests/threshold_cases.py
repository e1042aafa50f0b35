"""Hand-written known answers of the threshold search (ARITHMETIC.md §6: code = qmin +
#{j : acc >= thr[row, j]}), shared by tests/test_threshold_known_answers.py (oracle, CPU) and
tests/cuda/test_cuda_thresholds.py (CUDA): every value and expected code below is a literal,
not computed by the code under test.

The accumulator values sit on, one below and one above every threshold; the tables have ties
(equal thresholds), the never-reached threshold acc.hi + 1 of an 8-bit accumulator (128),
acc.hi itself (127), a nonzero qmin, per-channel rows and a single-code table (no threshold).
Changing `>=` to `>` anywhere in a search changes the code of every value that equals a
threshold.
"""

import numpy as np

from nupes_sim.formats import CodeRange, UniformRange
from nupes_sim.layers import Accumulator, Linear
from nupes_sim.tables import DecodeTable, Thresholds
from nupes_sim.transformer.layers import MatMul

# One row, odd length, runs of ties (binary search over 7 entries), qmin = 0.
ROW7 = [-5, -5, -5, 0, 2, 2, 9]
V7 = [-6, -5, -4, -1, 0, 1, 2, 3, 8, 9, 10]
COUNT7 = [0, 3, 3, 3, 4, 4, 6, 6, 6, 7, 7]  # #{j : v >= ROW7[j]}

# Per channel: two rows of an 8-bit accumulator ([-128, 127]), qmin = -2, qmax = 2.
QMIN, QMAX = -2, 2
ROWS = [
    [-100, -3, -3, 50],  # a tie at -3
    [0, 0, 127, 128],  # a tie at 0; 127 = acc.hi; 128 = acc.hi + 1, never reached
]
ACC = [-128, -101, -100, -99, -4, -3, -2, -1, 0, 1, 49, 50, 51, 126, 127]
CODES = [  # CODES[i][c]: code of ACC[i] in channel c
    [-2, -2],
    [-2, -2],
    [-1, -2],
    [-1, -2],
    [-1, -2],
    [1, -2],
    [1, -2],
    [1, -2],
    [1, 0],
    [1, 0],
    [1, 0],
    [2, 0],
    [2, 0],
    [2, 0],
    [2, 1],
]

# A table of a single code (qmin = qmax = 3): no threshold, every value maps to 3.
SINGLE_QMIN = 3


def thresholds():
    return Thresholds(np.array(ROWS, np.int64), QMIN, QMAX)


def row7():
    return Thresholds(np.array([ROW7], np.int64), 0, len(ROW7))


def single():
    return Thresholds(np.zeros((1, 0), np.int64), SINGLE_QMIN, SINGLE_QMIN)


def _identity(bits):
    """8-bit (or `bits`) two's complement codes decoding to themselves."""
    r = UniformRange(bits, True)
    return r, DecodeTable(np.arange(r.qmin, r.qmax + 1, dtype=np.int64).reshape(1, -1), r.qmin, 1.0, 0)


def linear(requant=None):
    """Linear, K = 1, two channels, weights 1, bias 0, identity activations: acc[b, c] = x[b, 0],
    so the accumulator of input code x is x in both channels (8-bit wrap: never wraps)."""
    xr, xt = _identity(8)
    wr = CodeRange(2, True)  # codes -1, 0, 1
    return Linear(
        name="thr_ka",
        w_codes=np.ones((2, 1), np.int64),
        w_range=wr,
        x_range=xr,
        datapath="operand",
        w_table_index=np.zeros((2, 1), np.int64),
        acc=Accumulator(8, "wrap", 0),
        w_table=DecodeTable(np.array([[-1, 0, 1]], np.int64), wr.qmin, 1.0, 0),
        x_table=xt,
        requant=thresholds() if requant is None else requant,
    )


def linear_input():
    return np.array(ACC, np.int64).reshape(-1, 1)


def matmul(channel):
    """Transformer MatMul (per-tensor table: row `channel` of ROWS), K = 1, b = 1:
    acc[m, 0] = a[m, 0]."""
    ar, at = _identity(8)
    br, bt = _identity(2)  # codes -2..1
    rq = Thresholds(np.array([ROWS[channel]], np.int64), QMIN, QMAX)
    return MatMul(
        name="thr_ka_mm",
        a_range=ar,
        b_range=br,
        datapath="operand",
        acc=Accumulator(8, "wrap", 0),
        k_max=1,
        a_table=at,
        b_table=bt,
        requant=rq,
    )


def matmul_inputs():
    return np.array(ACC, np.int64).reshape(-1, 1), np.ones((1, 1), np.int64)


def expected(channel=None):
    """The literal codes: (len(ACC), 2), or one channel's column."""
    c = np.array(CODES, np.int64)
    return c if channel is None else c[:, channel : channel + 1]
