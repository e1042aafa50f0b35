"""Run the reference RTL (hdl/nupes_linear.v) under cocotb on Icarus on a golden file's Linear layer.

    .venv/bin/python hdl/run_bench.py fc_golden.h5 fc_hex/ rtl_dump/ [--layer fc] [--define BUG_GT]
then: nupes-sim diff fc_golden.h5 rtl_dump/ --stages acc,out
"""
import argparse
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent / "tests" / "hdl"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("golden")
    ap.add_argument("hex_dir", help="the golden file's hex export (nupes-sim hex)")
    ap.add_argument("dump", help="folder for the RTL's dump")
    ap.add_argument("--layer", default="fc")
    ap.add_argument("--define", action="append", default=[], help="Verilog define (e.g. a planted BUG_*)")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(BENCH))  # the cocotb test module (the runner passes sys.path on)
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    from nupes_sim.tb import GoldenVectors

    gv = GoldenVectors(a.golden)
    key = f"{gv.node(a.layer):03d}_{a.layer}"
    hexd = Path(a.hex_dir).resolve()
    work = Path(a.dump).resolve().parent / (Path(a.dump).name + ".sim")
    (work / "inc").mkdir(parents=True, exist_ok=True)
    shutil.copy(hexd / f"layers__{key}__params.vh", work / "inc" / "params.vh")
    r = get_runner("icarus")
    r.build(sources=[HERE / "nupes_linear.v", HERE / "nupes_linear_top.v"], hdl_toplevel="nupes_linear_top",
            includes=[work / "inc"], defines={"NUPES_HEX_DIR": f'"{hexd}/"', **{d: 1 for d in a.define}},
            build_dir=work / "build", timescale=("1ns", "1ps"), always=True)
    xml = r.test(test_module="linear_bench", hdl_toplevel="nupes_linear_top", test_dir=work,
           extra_env={"NUPES_GOLDEN": str(Path(a.golden).resolve()), "NUPES_LAYER": a.layer,
                      "NUPES_DUMP": str(Path(a.dump).resolve()),
                      "PYTHONPATH": os.pathsep.join([str(BENCH)] + sys.path)})
    if get_results(xml)[1]:
        print(f"the cocotb bench failed (see {xml})", file=sys.stderr)
        return 1
    print(f"wrote the RTL dump to {a.dump}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
