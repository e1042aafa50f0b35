"""nupes_sim.reference: the PyTorch reference optimizer (RTN, PowerQuant, GPTQ, NUPES)."""
