"""Mutation campaign against the golden reader and the model loader (issue #18; not run by
`make test`, which runs a small derandomized slice of the same kinds: test_reader_fuzz.py).

    .venv/bin/python tests/fuzz_campaign.py --golden 3000 --model 1000 --timeout 20 --seed 1

Every mutated file is read in a worker process (spawned, killed and replaced on a hang).
Outcomes: clean (GoldenFormatError / ModelFormatError), traceback (any other exception),
hang (no answer within --timeout s), different (accepted, but a value read differs from
the value stored), forbidden (accepted although the mutation is forbidden by the schema),
accepted (accepted, values identical), golden_rejected (a mutated model that loads but
whose golden file the strict reader refuses, or write_golden fails unclearly).
"""

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def stored_values(path):
    """{dataset path: int array as Python-int object array} read raw with h5py."""
    import h5py

    out = {}
    with h5py.File(path, "r") as f:

        def visit(n, o):
            if isinstance(o, h5py.Dataset) and o.dtype.kind in "iu":
                out[n] = np.asarray(o[()]).astype(object)

        f.visititems(visit)
    return out


def check_golden(path):
    from nupes_sim.golden import GoldenFormatError, layer_key, read_golden, vector_key

    try:
        g = read_golden(path)
    except GoldenFormatError:
        return "clean", ""
    raw = stored_values(path)
    for i, n in enumerate(g.graph.nodes):
        for k, a in g.layers[n.name]["datasets"].items():
            if k in g.layers[n.name]["derived"]:  # not stored (an older version's requant_table)
                continue
            r = raw.get(f"layers/{layer_key(i, n.name)}/{k}")
            if r is None or r.shape != a.shape or not (np.asarray(a).astype(object) == r).all():
                return "different", f"layers/{n.name}/{k}"
    for v, vec in enumerate(g.vectors):
        r = raw.get(f"vectors/{vector_key(v)}/input")
        if r is None or r.shape != vec["input"].shape or not (vec["input"].astype(object) == r).all():
            return "different", f"vector {v} input"
        for i, n in enumerate(g.graph.nodes):
            for s, a in vec["stages"][n.name].items():
                r = raw.get(f"vectors/{vector_key(v)}/{layer_key(i, n.name)}/{s}")
                if r is None or r.shape != a.shape or not (a.astype(object) == r).all():
                    return "different", f"vector {v} {n.name}/{s}"
    return "accepted", ""


def check_model(path):
    from nupes_sim.golden import GoldenFormatError, random_inputs, read_golden, write_golden
    from nupes_sim.serialize import ModelFormatError, load_model

    try:
        m = load_model(path, full=True)
    except ModelFormatError:
        return "clean", ""
    shape = m.input_shape or (m.graph.nodes[0].layer.k,)
    d = tempfile.mkdtemp()
    gp = os.path.join(d, "g.h5")
    try:
        write_golden(m.graph, random_inputs(m.graph, 1, 0, shape), gp, compression=None)
        read_golden(gp)
    except (GoldenFormatError, ValueError) as e:
        return "golden_rejected", f"{type(e).__name__}: {str(e)[:200]}"
    finally:
        for n in os.listdir(d):
            os.unlink(os.path.join(d, n))
        os.rmdir(d)
    return "accepted", ""


def worker(q_in, q_out):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    while True:
        job = q_in.get()
        if job is None:
            return
        kind, path = job
        try:
            res = check_golden(path) if kind == "golden" else check_model(path)
        except Exception as e:
            res = (
                "traceback",
                f"{type(e).__name__}: {str(e)[:200]} @ {traceback.extract_tb(e.__traceback__)[-1].name}",
            )
        q_out.put(res)


class Pool:
    def __init__(self, ctx):
        self.ctx = ctx
        self.start()

    def start(self):
        self.q_in, self.q_out = self.ctx.Queue(), self.ctx.Queue()
        self.p = self.ctx.Process(target=worker, args=(self.q_in, self.q_out), daemon=True)
        self.p.start()

    def run(self, job, timeout):
        self.q_in.put(job)
        try:
            return self.q_out.get(timeout=timeout)
        except Exception:
            self.p.kill()
            self.p.join()
            self.start()
            return "hang", ""

    def close(self):
        self.q_in.put(None)
        self.p.join(5)


# real files of golden schema 1 and 2 (tests/fixtures/old), which the reader still reads
OLD_GOLDEN = [
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "old", f"conv_schema{v}.h5")
    for v in (1, 2)
]


def make_sources(d):
    from tiny_models import add_inputs, add_net, conv_inputs, conv_net

    from nupes_sim.golden import write_golden
    from nupes_sim.serialize import save_model

    srcs = {"golden": [], "model": []}
    for name, g, x, shape in (
        ("conv", conv_net(), conv_inputs(2), (3, 8, 8)),
        ("add", add_net(), add_inputs(2), None),
    ):
        for comp in (None, "gzip"):
            p = os.path.join(d, f"{name}_{comp}.golden.h5")
            write_golden(g, x, p, compression=comp)
            srcs["golden"].append(p)
        p = os.path.join(d, f"{name}.model.h5")
        save_model(g, p, input_shape=shape, loss_history={g.nodes[-1].name: [1.0, 0.5]})
        srcs["model"].append(p)
    srcs["golden"] += OLD_GOLDEN  # last: the test slice (tests/test_reader_fuzz.py) indexes the first four
    return srcs


def main(argv=None):
    from h5_mutations import KINDS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--golden", type=int, default=3000)
    ap.add_argument("--model", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    ctx = mp.get_context("spawn")
    pool = Pool(ctx)
    figures = {}
    examples = defaultdict(list)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        srcs = make_sources(d)
        for what, n in (("golden", a.golden), ("model", a.model)):
            c, per_kind = Counter(), defaultdict(Counter)
            kinds = sorted(KINDS)
            for i in range(n):
                kind = kinds[i % len(kinds)]
                src = srcs[what][int(rng.integers(len(srcs[what])))]
                dst = os.path.join(d, f"m{i}.h5")
                try:
                    forbidden = KINDS[kind](src, dst, rng)
                except Exception:  # the mutation itself was impossible on this file
                    c["skipped"] += 1
                    continue
                out, detail = pool.run((what, dst), a.timeout)
                if out == "accepted" and forbidden:
                    out = "forbidden"
                c[out] += 1
                per_kind[kind][out] += 1
                if out not in ("clean", "accepted") and len(examples[(what, out)]) < 5:
                    examples[(what, out)].append(f"{kind}: {detail}")
                for p in (dst, dst + ".ext.h5"):
                    if os.path.exists(p):
                        os.unlink(p)
            figures[what] = {"total": n, **dict(c), "per_kind": {k: dict(v) for k, v in per_kind.items()}}
    pool.close()
    figures["seconds"] = round(time.time() - t0, 1)
    figures["examples"] = {f"{w}/{o}": v for (w, o), v in examples.items()}
    print(json.dumps(figures, indent=1))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(figures, fh, indent=1)


if __name__ == "__main__":
    main()
