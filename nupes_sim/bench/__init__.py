"""Benchmarks shipped with the package (``nupes-sim bench``): cpu (the CPU backend against
the oracle and PyTorch float32; needs the 'reference' extra for torch) and quant_timing (the
quantization methods). The GPU benchmark is nupes_sim.cuda.bench."""
