"""Verbs that hand their arguments to another module's main: demo, bench, eval."""

import argparse

from .cli_common import lazy


def cmd_demo(args):
    return int(lazy("nupes_sim.demo", "main", "demo")(list(args.rest)) or 0)


def cmd_bench(args):
    rest = list(args.rest)
    if args.backend == "cpu":
        return int(lazy("nupes_sim.bench.cpu", "main", "bench --backend cpu")(rest) or 0)
    return int(lazy("nupes_sim.cuda.bench", "main", "bench --backend cuda")(rest) or 0)


def cmd_eval(args):
    return int(lazy("nupes_sim.reference.results", "main", "eval")(list(args.rest)) or 0)


def register_demo(add):
    sp = add(
        "demo",
        "run the project's demo (nupes_sim.demo.main)",
        cmd_demo,
        "nupes-sim demo                      # the project's main job (nupes_sim.demo)",
    )
    sp.add_argument("rest", nargs=argparse.REMAINDER, help="arguments passed to the demo")


def register_tools(add):
    sp = add(
        "bench",
        "benchmarks (nupes_sim.bench.cpu or nupes_sim.cuda.bench)",
        cmd_bench,
        "nupes-sim bench --backend cpu -- --help",
    )
    sp.add_argument("--backend", choices=("cpu", "cuda"), default="cpu")
    sp.add_argument("rest", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")
    sp = add(
        "eval",
        "evaluation tables of the reference (nupes_sim.reference.results.main)",
        cmd_eval,
        "nupes-sim eval -- --help        # nupes_sim.reference.results",
    )
    sp.add_argument("rest", nargs=argparse.REMAINDER, help="arguments passed on")
