"""The golden reader and the model loader on mutated files (issue #18), a derandomized slice
of the campaign in tests/fuzz_campaign.py: every mutation kind of h5_mutations on every
source file. Allowed outcomes only: a clean GoldenFormatError / ModelFormatError, or (for a
mutation the schema allows, such as forged values with recomputed checksums) acceptance with
every value read equal to the value stored."""

import os

import fuzz_campaign
import numpy as np
import pytest
from h5_mutations import KINDS

from nupes_sim.golden import GoldenFormatError, read_golden
from nupes_sim.serialize import ModelFormatError, load_model

PER_KIND = 4


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return fuzz_campaign.make_sources(str(tmp_path_factory.mktemp("src")))


@pytest.mark.parametrize("what", ["golden", "model"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_mutated_files_give_clean_errors_or_identical_values(sources, tmp_path, what, kind):
    rng = np.random.default_rng(sum(map(ord, what + kind)))
    outcomes = []
    for i in range(PER_KIND):
        src = sources[what][i % len(sources[what])]
        dst = str(tmp_path / f"m{i}.h5")
        try:
            forbidden = KINDS[kind](src, dst, rng)
        except Exception:  # the mutation does not apply to this file
            continue
        res, detail = (fuzz_campaign.check_golden if what == "golden" else fuzz_campaign.check_model)(dst)
        if res == "accepted" and forbidden:
            res = "forbidden"
        outcomes.append((res, detail))
        assert res in ("clean", "accepted"), (what, kind, i, res, detail)
    assert outcomes


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_mutated_old_schema_files_give_clean_errors_or_identical_values(tmp_path, kind):
    """The same on the committed schema-1 and schema-2 files (read without requant_table,
    input_shape with the batch axis): the older layout gets no weaker checks."""
    rng = np.random.default_rng(sum(map(ord, "old" + kind)))
    outcomes = []
    for i, src in enumerate(fuzz_campaign.OLD_GOLDEN * 2):
        dst = str(tmp_path / f"m{i}.h5")
        try:
            forbidden = KINDS[kind](src, dst, rng)
        except Exception:  # the mutation does not apply to this file
            continue
        res, detail = fuzz_campaign.check_golden(dst)
        if res == "accepted" and forbidden:
            res = "forbidden"
        outcomes.append(res)
        assert res in ("clean", "accepted"), (kind, i, res, detail)
    assert outcomes


def test_huge_declared_dataset_is_refused_without_reading(sources, tmp_path):
    import h5py

    dst = tmp_path / "huge.h5"
    import shutil

    shutil.copy(sources["golden"][0], dst)
    with h5py.File(dst, "r+") as f:
        name = "vectors/000000/input"
        attrs = dict(f[name].attrs)
        del f[name]
        f.create_dataset(name, shape=(2**40, 3, 8, 8), dtype="<i8", chunks=(1, 3, 8, 8))
        for k, v in attrs.items():
            f[name].attrs[k] = v
    assert os.path.getsize(dst) < 1 << 20
    with pytest.raises(GoldenFormatError, match="declared shape"):
        read_golden(dst)


@pytest.mark.parametrize("what, where", [("golden", "model"), ("model", "model"), ("model", "loss_history")])
def test_many_small_chunks_are_refused_without_reading(sources, tmp_path, what, where):
    """Bounded time (#18): a 1-D dataset of 2^20 one-element chunks, nothing written, is a
    few KB on disk but took 16 s to read on the loaded project machine. Model arrays and
    loss_history (any length) are read before their shapes can be known: only the chunk
    count refuses them in time."""
    import json
    import shutil
    import time

    import h5py

    dst = tmp_path / "chunks.h5"
    shutil.copy(sources[what][0], dst)
    with h5py.File(dst, "r+") as f:
        if where == "model":
            name = "model/arrays/" + sorted(f["model/arrays"].keys())[0]
            dt, attrs = f[name].dtype, dict(f[name].attrs)
            del f[name]
        else:
            if "loss_history" in f:
                del f["loss_history"]
            layer = json.loads(bytes(f["model/graph_json"][()]).decode())["nodes"][0]["name"]
            name, dt, attrs = "loss_history/0000", np.dtype("<f8"), {"layer": layer}
        f.create_dataset(name, shape=(2**20,), dtype=dt, chunks=(1,))
        for k, v in attrs.items():
            f[name].attrs[k] = v
    assert os.path.getsize(dst) < 1 << 20
    t = time.time()
    err = GoldenFormatError if what == "golden" else ModelFormatError
    with pytest.raises(err, match=r"declares 1048576 chunks of shape \(1,\); the limit is 65536"):
        (read_golden if what == "golden" else load_model)(dst)
    assert time.time() - t < 5


def test_schema_version_as_string_and_links_are_refused(sources, tmp_path):
    import shutil

    import h5py

    for src, reader, err in (
        (sources["golden"][0], read_golden, GoldenFormatError),
        (sources["model"][0], load_model, ModelFormatError),
    ):
        dst = tmp_path / "v.h5"
        shutil.copy(src, dst)
        with h5py.File(dst, "r+") as f:
            f.attrs["schema_version" if "schema_version" in f.attrs else "version"] = "1"
        with pytest.raises(err, match="version"):
            reader(dst)
        shutil.copy(src, dst)
        with h5py.File(dst, "r+") as f:
            key = next(k for k in f["model/arrays"].keys())
            data, sha = f["model/arrays"][key][()], f["model/arrays"][key].attrs["sha256"]
            del f["model/arrays"][key]
            with h5py.File(tmp_path / "other.h5", "w") as o:
                o["d"] = data
                o["d"].attrs["sha256"] = sha
            f["model/arrays"][key] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/d")
        with pytest.raises(err, match="link"):
            reader(dst)
