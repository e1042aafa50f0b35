"""Thin wrapper: the timing script lives in the package (nupes_sim.bench.quant_timing)."""

from nupes_sim.bench.quant_timing import main

if __name__ == "__main__":
    main()
