"""GPU benchmark of the cuda backend: ``nupes-sim bench --backend cuda`` calls ``main(argv)``.

Times, on the same GPU in the same run:
  * linear 4096x4096 at batch 4096 and a 3x3 conv 128->128 on 32x56x56 (pad 1), both
    datapaths, through the register-tiled MAC kernel (conv: device im2col + GEMM), inputs
    and weights already on the device: the device time is the decode/im2col kernel plus the
    MAC kernel (integer work only; the ratio vs fp32 uses it). The weight preparation (host
    decode + (K, O) transpose + copy) happens once per layer, outside the timed loop;
  * one end-to-end run_layer call per case (checks, weight prep, transfers, outputs), wall clock;
  * torch.matmul float32 with TF32 off on the equivalent GEMM shapes (and cudnn conv2d fp32).
Prints each time, the integer MAC throughput, and the ratio to fp32 (ours / fp32 throughput).
Every timed result is checked against an int64 NumPy computation on sampled rows (bit-exact,
else exit 1). Python: python -m nupes_sim.cuda.bench [--quick] [--reps N]
"""

import argparse
import sys
import time

import numpy as np


def _events(cuda, fn, reps):
    fn()  # warm-up (compiles)
    cuda.synchronize()
    start, stop = cuda.event(), cuda.event()
    start.record()
    for _ in range(reps):
        fn()
    stop.record()
    stop.synchronize()
    return start.elapsed_time(stop) / 1e3 / reps  # ms


def _torch_time(M, K, N, reps, conv=None):
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        return None, f"torch unavailable: {e}"
    if not torch.cuda.is_available():
        return None, "torch.cuda.is_available() is False"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    dev = torch.device("cuda")
    if conv is None:
        a = torch.randn(M, K, device=dev)
        b = torch.randn(K, N, device=dev)
        fn = lambda: torch.matmul(a, b)  # noqa: E731
    else:
        B, C, H, W, O = conv
        x = torch.randn(B, C, H, W, device=dev)
        w = torch.randn(O, C, 3, 3, device=dev)
        fn = lambda: torch.nn.functional.conv2d(x, w, padding=1)  # noqa: E731
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(reps):
        fn()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / 1e3 / reps, f"torch {torch.__version__} {torch.cuda.get_device_name()}"


def _layers(kind, dp, shape, rng):
    from nupes_sim.formats import PowerFormat
    from nupes_sim.layers import Accumulator, Conv2d, Linear

    wf = PowerFormat(4, True, 0.5, 1.0 / 7)  # decode (|q|/7)^2 <= 1
    xf = PowerFormat(4, False, 0.5, 1.0 / 15)
    if dp == "product":
        xf = PowerFormat(4, True, 0.5, 1.0 / 7)
    kw = dict(datapath=dp, w_frac_bits=6, x_frac_bits=6, product_frac_bits=12, acc=Accumulator(32, "wrap"))
    if kind == "linear":
        O, K, B = shape
        w = rng.integers(-7, 8, (O, K))
        x = rng.integers(xf.range.qmin, xf.range.qmax + 1, (B, K))
        return Linear.build("bench_fc", w, wf, xf, **kw), x
    B, C, H, W, O = shape
    w = rng.integers(-7, 8, (O, C, 3, 3))
    x = rng.integers(xf.range.qmin, xf.range.qmax + 1, (B, C, H, W))
    return Conv2d.build("bench_conv", w, wf, xf, padding=1, **kw), x


def _prepare(backend, layer, x, conv):
    """Device arrays and a closure running the whole integer MAC (decode/im2col + kernel)."""
    K = backend._k()
    cuda = K.cuda
    plan = backend._plan(layer, True)
    opt = backend._opts()
    lut = cuda.to_device(backend._x_lut(layer))
    xd = cuda.to_device(np.ascontiguousarray(x, np.int64))
    dt = backend._at_dtype(layer, plan)
    if not conv:
        B, Kd = x.shape
        N, HW, shape = B, 1, (B, layer.out_channels)
        AT = cuda.device_array((Kd, N), dt)

        def fill():
            backend._launch(K.decode_t, N * Kd, opt["threads"], xd, lut, layer.x_range.qmin, AT)
    else:
        B, C, H, W = x.shape
        ho, wo = layer.out_hw(H, W)
        N, HW, Kd = B * ho * wo, ho * wo, layer.k
        shape = (B, layer.out_channels, ho, wo)
        AT = cuda.device_array((Kd, N), dt)
        dp = K.DP_OPERAND if layer.datapath == "operand" else K.DP_PRODUCT

        def fill():
            backend._launch(
                K.im2col_t,
                N * Kd,
                opt["threads"],
                xd,
                lut,
                layer.x_range.qmin,
                dp,
                0,
                C,
                3,
                3,
                1,
                1,
                1,
                1,
                1,
                1,
                ho,
                wo,
                AT,
            )

    size = int(np.prod(shape))
    exact_d = cuda.device_array(size, np.int64)
    acc_d = cuda.device_array(size, np.int64)
    # weight side (host decode/transpose + copy): per layer, not per activation batch; it is
    # in the end-to-end time printed next to the device time, not in the device time
    wd = backend._mac_weights(layer, slice(None), plan)

    def run():  # device work only: decode/im2col kernel + MAC kernel, nothing on the host
        fill()
        backend._mac_launch(layer, wd, AT, N, HW, layer.out_channels, 0, exact_d, acc_d, plan, opt)

    return run, exact_d, shape, plan


def _weights_rows(layer):
    qw = layer.w_codes.reshape(layer.out_channels, -1).astype(np.int64)
    if layer.datapath == "operand":
        return layer.w_table.lut[layer.w_table_index, qw - layer.w_range.qmin]
    return None


def _check(layer, x, exact, conv, rows):
    """Sampled outputs against int64 NumPy (exact since bound < 2^63); returns mismatches."""
    from nupes_sim import oracle

    if conv:
        sub = x[:1]
        want = oracle.run_layer(layer, sub)["acc_exact"] if sub.shape[2] * sub.shape[3] <= 64 else None
        if want is None:  # direct int64 conv of batch 0 via im2col
            cols, valid = oracle.im2col(sub, (3, 3), layer.stride, layer.padding, layer.dilation)
            cols = cols.reshape(-1, layer.k)
            valid = valid.reshape(-1, layer.k)
            prods_w = _weights_rows(layer)
            if prods_w is not None:
                xv = np.where(valid, layer.x_table.lut[0, cols - layer.x_range.qmin], 0)
                got = xv @ prods_w.T + layer.bias[None, :]
            else:
                got = _product_sum(layer, np.where(valid, cols, 0))
            ho, wo = exact.shape[2:]
            want = got.reshape(1, ho, wo, -1).transpose(0, 3, 1, 2)
        return int((exact[:1] != want).sum())
    xs = x[rows]
    wr = _weights_rows(layer)
    if wr is not None:
        want = layer.x_table.lut[0, xs - layer.x_range.qmin] @ wr.T + layer.bias[None, :]
    else:
        want = _product_sum(layer, xs)
    return int((exact[rows] != want).sum())


def _product_sum(layer, xc):
    """Exact int64 sums of the product datapath for code rows xc (R, K), O chunked."""
    qw = layer.w_codes.reshape(layer.out_channels, -1).astype(np.int64)
    lut = layer.p_table.lut
    out = np.empty((xc.shape[0], qw.shape[0]), np.int64)
    for r in range(xc.shape[0]):
        v = qw * xc[r][None, :]
        mags = lut[layer.w_table_index, layer.p_table.index(np.abs(qw), np.abs(xc[r])[None, :])]
        out[r] = (np.sign(v) * mags).sum(axis=1) + layer.bias
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="nupes-sim bench --backend cuda", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes (smoke test)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--datapaths", default="operand,product")
    args = ap.parse_args(argv)
    from . import backend

    backend.ensure_available()
    K = backend._k()
    cuda = K.cuda
    name = getattr(cuda.get_current_device(), "name", b"CUDA simulator")
    print(
        f"device: {name.decode() if isinstance(name, bytes) else name}  gemm tiles "
        + "; ".join(
            f"{a}/{'operand' if d == K.DP_OPERAND else 'product'} {K.gemm_default(a, d)[0]}"
            for a in ("int32", "int64")
            for d in (K.DP_OPERAND, K.DP_PRODUCT)
        )
    )
    print(
        "device time = decode/im2col + MAC kernel (CUDA events; weights already on the device); "
        "end to end = one run_layer call"
    )
    rng = np.random.default_rng(0)
    lin = (20, 24, 16) if args.quick else (4096, 4096, 4096)
    cnv = (1, 4, 6, 6, 4) if args.quick else (32, 128, 56, 56, 128)
    failures = 0
    results = []
    for kind, shape in (("linear", lin), ("conv", cnv)):
        if kind == "linear":
            O, Kd, B = shape
            M, KK, NN, macs = B, Kd, O, B * Kd * O
            tt, info = _torch_time(B, Kd, O, args.reps)
        else:
            B, C, H, W, O = shape
            M, KK, NN = B * H * W, C * 9, O
            macs = M * KK * NN
            tt, info = _torch_time(M, KK, NN, args.reps)
            tconv, _ = _torch_time(0, 0, 0, args.reps, conv=shape)
        print(
            f"\n{kind} {shape}: {macs / 1e9:.2f} GMAC; fp32 (TF32 off) GEMM {M}x{KK}x{NN}: "
            + (f"{tt * 1e3:.3f} ms = {2 * macs / tt / 1e12:.2f} TFLOP/s" if tt else info)
            + (f"; cudnn conv2d fp32 {tconv * 1e3:.3f} ms" if kind == "conv" and tconv else "")
        )
        for dp in args.datapaths.split(","):
            t0 = time.time()
            layer, x = _layers(kind, dp, shape, rng)
            tb = time.time() - t0
            run, exact_d, oshape, plan = _prepare(backend, layer, x, kind == "conv")
            t = _events(cuda, run, args.reps)
            exact = exact_d.copy_to_host().reshape(oshape)
            bad = _check(
                layer, x, exact, kind == "conv", rng.choice(oshape[0], min(8, oshape[0]), replace=False)
            )
            failures += bad != 0
            ratio = (tt / t) if tt else float("nan")
            results.append((kind, dp, t, ratio, bad))
            print(
                f"  {dp:8s} path={plan[0]}/{plan[1]}  device {t * 1e3:9.3f} ms  {macs / t / 1e12:7.3f} TMAC/s  "
                f"ratio vs fp32 GEMM = {ratio:.3f}  sampled mismatches = {bad}  (layer build {tb:.1f} s)"
            )
            # end to end: one run_layer call (checks, weight prep + copies, input copy, kernels,
            # requant, all outputs back to the host), wall clock, after the warm-up above
            cuda.synchronize()
            t0 = time.perf_counter()
            backend.run_layer(layer, x)
            cuda.synchronize()
            te = time.perf_counter() - t0
            print(
                f"  {'':8s} end to end run_layer {te * 1e3:9.1f} ms  ({macs / te / 1e12:.3f} TMAC/s incl. host "
                f"work and transfers)"
            )
    # the sequential (saturate) path, on a smaller batch: informative only
    from nupes_sim.layers import Accumulator

    layer, x = _layers("linear", "operand", (1024, 1024, 256) if not args.quick else (6, 10, 4), rng)
    layer.acc = Accumulator(16, "saturate")
    t0 = time.time()
    r = backend.run_layer(layer, x)
    cuda.synchronize()
    t1 = time.time()
    r = backend.run_layer(layer, x)
    print(
        f"\nsaturate (sequential per-output kernel) linear {layer.w_codes.shape} batch {x.shape[0]}: "
        f"{(time.time() - t1) * 1e3:.1f} ms end to end incl. transfers (first call {t1 - t0:.1f} s)"
    )
    from nupes_sim import oracle

    if args.quick:
        want = oracle.run_layer(layer, x)
        ok = all((r[k] == want[k]).all() for k in want)
        print(f"  equals oracle: {ok}")
        failures += not ok
    print("\nsummary: " + "; ".join(f"{k}/{d} ratio {q:.3f}" for k, d, _, q, _ in results))
    if failures:
        print(f"FAIL: {failures} benchmark result(s) differ from the int64 reference")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
