"""Thin wrapper: the CPU benchmark lives in the package (nupes_sim.bench.cpu, `nupes-sim bench`)."""

import sys

from nupes_sim.bench.cpu import main

if __name__ == "__main__":
    sys.exit(main())
