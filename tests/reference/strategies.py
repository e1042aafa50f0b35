"""Reusable hypothesis strategies for quantizer tests (weights, specs)."""

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nupes_sim.reference.quantizer import PowerQuantizer

bits = st.integers(2, 8)
exponents = st.floats(0.05, 4.0, allow_nan=False)


@st.composite
def weight_matrices(draw, max_rows=6, max_groups=4, group_sizes=(1, 2, 3, 4), zeros=True):
    """(w float64 (C, K), group size dividing K) with mixed magnitudes, exact zeros,
    sometimes an all-zero channel and an outlier."""
    g = draw(st.sampled_from(group_sizes))
    C = draw(st.integers(1, max_rows))
    K = g * draw(st.integers(1, max_groups))
    # magnitudes 0 or in [1e-20, 1e3]: |w|^a stays a normal float64 for every a in [0.05, 4]
    # (far smaller maxima are rejected by the quantizer, see test_unrepresentable_scale_is_an_error)
    mags = st.one_of(
        st.just(0.0), st.builds(lambda m, s: s * m, st.floats(1e-20, 1e3), st.sampled_from([-1.0, 1.0]))
    )
    w = draw(hnp.arrays(np.float64, (C, K), elements=mags))
    if zeros and draw(st.booleans()):
        w[draw(st.integers(0, C - 1))] = 0.0
    return w, g


@st.composite
def quantizers(draw, group_size=None):
    gran = draw(st.sampled_from(["tensor", "channel"] + (["group"] if group_size else [])))
    g = group_size if gran == "group" else None
    return PowerQuantizer(draw(bits), True, draw(exponents), gran, g, full_range=draw(st.booleans()))
