"""cocotb bench for hdl/nupes_linear_top.v: drives the golden vectors of one Linear layer and
writes the RTL's accumulators and output codes as a hex dump (docs/GOLDEN.md "Dumps").

Environment: NUPES_GOLDEN (golden .h5), NUPES_LAYER (layer name), NUPES_DUMP (dump folder).
"""
import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from nupes_sim.tb import DumpWriter, GoldenVectors


def _value(sig, signed, what):
    v = sig.value
    if not v.is_resolvable:
        raise AssertionError(f"{what}: unresolved bits {v}")
    return v.to_signed() if signed else v.to_unsigned()


@cocotb.test()
async def golden_vectors(dut):
    gv = GoldenVectors(os.environ["NUPES_GOLDEN"])
    layer = os.environ["NUPES_LAYER"]
    dump = DumpWriter(os.environ["NUPES_DUMP"], gv)
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    for s in (dut.x_we, dut.start, dut.x_addr, dut.x_data):
        s.value = 0
    dut.rst.value = 1
    for _ in range(2):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    xmask = (1 << len(dut.x_data)) - 1
    n_out = gv.stage(0, layer, "out").size
    out_signed = gv.word(0, layer, "out")[1]
    for v in range(gv.n_vectors):
        for k, c in enumerate(gv.layer_input(v, layer).reshape(-1).tolist()):
            dut.x_we.value, dut.x_addr.value, dut.x_data.value = 1, k, int(c) & xmask
            await RisingEdge(dut.clk)
        dut.x_we.value = 0
        dut.start.value = 1
        await RisingEdge(dut.clk)
        dut.start.value = 0
        acc, out = [None] * n_out, [None] * n_out
        for _ in range(100000):
            await RisingEdge(dut.clk)
            await ReadOnly()
            if dut.out_valid.value:
                o = int(dut.out_index.value)
                acc[o] = _value(dut.out_acc, True, f"vector {v} out_acc[{o}]")
                out[o] = _value(dut.out_code, out_signed, f"vector {v} out_code[{o}]")
            if dut.done.value:
                break
        else:
            raise AssertionError(f"vector {v}: done never rose")
        await RisingEdge(dut.clk)
        assert None not in acc, f"vector {v}: outputs {[i for i, a in enumerate(acc) if a is None]} never emitted"
        dump.put(v, layer, "acc", acc)
        dump.put(v, layer, "out", out)
    dump.close()
