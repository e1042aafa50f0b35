"""Older golden schema versions for tests: rewrite a file written today (schema 3) the way
schema 1 or 2 stored it (no requant_table datasets; input_shape with the batch axis 1).
Versions 1 and 2 differ only in the schema_version attribute for the layer types both have
(CHANGELOG.md). The committed tests/fixtures/old/conv_schema{1,2}.h5 are real files of those
versions (written by the code of that time); this helper makes others from today's models."""

import h5py
import numpy as np


def downgrade(path, version):
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = np.int64(version)
        f.attrs["input_shape"] = np.concatenate([[1], f.attrs["input_shape"]]).astype(np.int64)
        for g in f["layers"].values():
            if "requant_table" in g:
                del g["requant_table"]
    return path
