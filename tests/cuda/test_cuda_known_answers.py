"""The frozen known answers (tests/fixtures/, tests/test_known_answers.py) on the CUDA backend:
the transformer block (every vector) and the first vector of the threshold chain (one
threshold requantizer per rounding mode, on exact ties). Runs under NUMBA_ENABLE_CUDASIM=1 in
`make test`; the simulator runs each thread in Python, so the rescale chain (about 80 s
there, its kernel rounding is the primitives' shared source, pinned on the CPU) is left out.
"""

import os

import numpy as np
import pytest
from cuda_gate import cuda_unavailable_reason, require_or_skip

from nupes_sim.golden import read_golden

FIX = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
_REASON = cuda_unavailable_reason()


@pytest.mark.cuda
@pytest.mark.parametrize("name,n_vectors", [("attention", None), ("thresholds", 1)])
def test_cuda_reproduces_the_fixture(name, n_vectors):
    if _REASON is not None:
        require_or_skip(_REASON)
    ref = read_golden(os.path.join(FIX, f"{name}.h5"))
    vectors = ref.vectors[:n_vectors] if n_vectors else ref.vectors
    compared = 0
    for v, ev in enumerate(vectors):
        r = ref.graph.run(ev["input"], backend="cuda", intermediates=True)
        for layer, st in ev["stages"].items():
            assert st.keys() == r.stages[layer].keys(), (v, layer)
            for s, want in st.items():
                got = np.asarray(r.stages[layer][s], np.int64)
                assert got.shape == want.shape and np.array_equal(got, want), (v, layer, s)
                compared += want.size
    assert compared > 0
