"""Bit packing of weight codes in golden files (the `weight_codes_packed` datasets)."""

import numpy as np

PACKING = (
    "little-endian bitstream: element i (C order of weight_codes) occupies bits "
    "[i*b, (i+1)*b) of the stream, stream bit j is bit (j mod 8) of byte j//8 "
    "(element 0 in the low bits of byte 0); each field is a b-bit two's complement "
    "value (signed codes) or b-bit unsigned value; unused high bits of the last byte are 0"
)


def pack_codes(codes, bits):
    """Pack integer codes into bytes (see PACKING): b-bit two's complement fields, LSB first."""
    c = np.asarray(codes, np.int64).reshape(-1)
    fields = (c & ((1 << bits) - 1)).astype(np.uint64)
    bitmat = ((fields[:, None] >> np.arange(bits, dtype=np.uint64)[None, :]) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bitmat.reshape(-1), bitorder="little")


def unpack_codes(packed, bits, signed, n):
    """Inverse of pack_codes for n elements."""
    stream = np.unpackbits(np.asarray(packed, np.uint8), bitorder="little")[: n * bits].reshape(n, bits)
    v = (stream.astype(np.int64) << np.arange(bits, dtype=np.int64)[None, :]).sum(axis=1)
    if signed:
        v = np.where(v >= 1 << (bits - 1), v - (1 << bits), v)
    return v


__all__ = ["PACKING", "pack_codes", "unpack_codes"]
