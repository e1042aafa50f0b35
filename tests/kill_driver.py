"""Helper process for test_atomic_writers: forks a child that rewrites one output in a loop,
SIGKILLs it after a seeded random delay, reaps it (so its pid is really gone) and reports.

Usage: python kill_driver.py KIND FINAL_PATH WORKDIR TRIALS SEED
Protocol (stdout lines): 'span S' once, then per trial 'killed I' after which it waits for
one line on stdin before the next trial. Runs without numba/torch, so fork is safe here.
"""

import os
import shutil
import signal
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))


def writer(kind, final, work):
    from tiny_models import conv_inputs, conv_net

    from nupes_sim import cli
    from nupes_sim.audit import audit
    from nupes_sim.golden import export_hex, write_golden
    from nupes_sim.serialize import save_model

    g = conv_net()
    x = conv_inputs(3)
    state = {"i": 0}

    def once():
        i = state["i"] = state["i"] + 1
        if kind == "model":
            save_model(g, final, input_shape=(3, 8, 8), loss_history={"fc": [float(i % 2), 0.5]})
        elif kind == "golden":
            write_golden(g, x[: 2 + i % 2], final, compression=None)
        elif kind == "hex":  # export_hex takes a new or empty folder only
            if os.path.isdir(final):
                shutil.rmtree(final)
            export_hex(os.path.join(work, f"src{i % 2}.h5"), final)
        elif kind in ("simulate_npy", "simulate_h5"):
            assert (
                cli.main(
                    [
                        "simulate",
                        os.path.join(work, "model.h5"),
                        "--input",
                        os.path.join(work, f"x{i % 2}.npy"),
                        "--out",
                        final,
                        "-q",
                    ]
                    + (["--intermediates"] if kind == "simulate_h5" else [])
                )
                == 0
            )
        elif kind == "audit":
            audit(g, x[: 1 + i % 2], final, plots=i % 2 == 0)
        else:
            raise ValueError(kind)

    return once


def prepare(work):
    from tiny_models import conv_inputs, conv_net

    from nupes_sim.golden import write_golden
    from nupes_sim.serialize import save_model

    save_model(conv_net(), os.path.join(work, "model.h5"), input_shape=(3, 8, 8))
    for i in range(2):
        write_golden(conv_net(), conv_inputs(2 + i), os.path.join(work, f"src{i}.h5"), compression=None)
        np.save(os.path.join(work, f"x{i}.npy"), conv_inputs(40 + 20 * i, seed=i))


def main():
    kind, final, work, trials, seed = sys.argv[1:6]
    prepare(work)
    once = writer(kind, final, work)
    t0 = time.perf_counter()
    once()
    once()  # the final path now exists: later trials check it survives intact
    span = (time.perf_counter() - t0) / 2
    print(f"span {span:.4f}", flush=True)
    rng = np.random.default_rng(int(seed))
    for t in range(int(trials)):
        pid = os.fork()
        if pid == 0:  # child: rewrite forever until killed
            try:
                while True:
                    once()
            finally:
                os._exit(1)
        time.sleep(float(rng.uniform(0.2, 2.0)) * span)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        print(f"killed {t}", flush=True)
        sys.stdin.readline()


if __name__ == "__main__":
    main()
