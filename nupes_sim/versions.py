"""Version numbers of what the project promises (one place; see CHANGELOG.md).

CONTRACT_VERSION: docs/ARITHMETIC.md — bump on any change of a computed bit (table rules,
rounding, hash32, accumulator, requantization, stages). GOLDEN_SCHEMA_VERSION: the golden
file layout (docs/GOLDEN.md). MODEL_FORMAT_VERSION: the model file layout (serialize.py).
The known-answer fixtures (tests/fixtures/) may change only with a bump of one of these and
a CHANGELOG.md entry saying what changed.
"""

CONTRACT_VERSION = 1
GOLDEN_SCHEMA_VERSION = 3
MODEL_FORMAT_VERSION = 3

__all__ = ["CONTRACT_VERSION", "GOLDEN_SCHEMA_VERSION", "MODEL_FORMAT_VERSION"]
