"""Integer transformer layer types (docs/ARITHMETIC.md §10-§16), registered layer types of the
layer protocol (nupes_sim/layers/base.py). One module per job: lookup (Embedding, element-wise
tables), matmul, softmax, layernorm, layout (Reshape, Transpose, Slice, PadMask); common holds
what they share. Builders make the tables from formats; construction proves every
intermediate fits int64 (Python integers) or raises ValueError naming the cause.
"""

from ..formats import PowerFormat, UniformFormat
from .layernorm import LayerNorm
from .layout import PadMask, Reshape, Slice, Transpose
from .lookup import ElementwiseTable, Embedding
from .matmul import DATAPATHS, MatMul
from .softmax import Softmax

TRANSFORMER_TYPES = (
    Embedding,
    ElementwiseTable,
    MatMul,
    Softmax,
    LayerNorm,
    Reshape,
    Transpose,
    Slice,
    PadMask,
)

__all__ = [
    "Embedding",
    "ElementwiseTable",
    "MatMul",
    "Softmax",
    "LayerNorm",
    "Reshape",
    "Transpose",
    "Slice",
    "PadMask",
    "TRANSFORMER_TYPES",
    "DATAPATHS",
    "PowerFormat",
    "UniformFormat",
]
