"""nupes-sim: bit-exact integer simulator of power-quantized (PowerQuant/NUPES) networks."""

__version__ = "0.1.0"
