"""Golden vectors: a versioned HDF5 schema (docs/GOLDEN.md), a writer, a strict reader, hex export.

schema.py: names, keys, version, what each layer and stage holds; packing.py: packed weight
codes; writer.py: `write_golden(graph, inputs, path, ...)` runs every vector (one at a time,
batch 1) through a backend with intermediates and streams them to an atomically written HDF5
file; reader.py: `read_golden(path)` validates everything and raises `GoldenFormatError`
naming the problem and where, never returning partial results; hex.py: `export_hex` /
`read_hex_dir`. Every public name is importable from `nupes_sim.golden`.
"""

from .hex import export_hex, hex_tensors, read_hex_dir
from .packing import PACKING, pack_codes, unpack_codes
from .reader import Golden, file_digest, read_golden
from .schema import (
    ROOT_ATTRS,
    SCHEMA,
    SCHEMA_VERSION,
    STAGES,
    GoldenFormatError,
    input_range,
    layer_key,
    layer_params,
    out_code_range,
    random_inputs,
    requant_input_range,
    requant_table_array,
    stage_names,
    stage_range,
    stage_shapes,
    vector_key,
)
from .writer import write_golden

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "GoldenFormatError",
    "Golden",
    "write_golden",
    "read_golden",
    "export_hex",
    "read_hex_dir",
    "pack_codes",
    "unpack_codes",
    "layer_params",
    "random_inputs",
    "input_range",
    "file_digest",
    "hex_tensors",
    "PACKING",
    "ROOT_ATTRS",
    "STAGES",
    "layer_key",
    "vector_key",
    "stage_names",
    "stage_range",
    "stage_shapes",
    "out_code_range",
    "requant_input_range",
    "requant_table_array",
]
