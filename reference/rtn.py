"""Round-to-nearest quantization: uniform (a = 1) or power (any a), per tensor/channel/group."""

from .quantizer import PowerQuantizer, QuantizedWeight


def rtn_quantize(
    weight,
    bits=4,
    granularity="channel",
    group_size=None,
    exponent=1.0,
    method=None,
    name="w",
    full_range=False,
):
    """RTN codes with default scales (max|w|^a / D per slice, quantizer.py). Returns a QuantizedWeight.

    exponent=1.0 is uniform symmetric RTN; any other exponent is power RTN (PowerQuant's
    rounding step). `weight` is a torch tensor of any float dtype (conv: 4-D).
    """
    q = PowerQuantizer(bits, True, exponent, granularity, group_size, full_range)
    s = q.scales(weight, name)
    codes = q.encode(weight, s, name)
    return QuantizedWeight.from_codes(q, codes, s, method or ("rtn" if exponent == 1.0 else "power_rtn"))


def weight_error(weight, qw):
    """‖W − ŵ‖² (float64)."""
    return float(((weight.detach().double() - qw.decode()) ** 2).sum())
