"""quantize_model: one entry point for RTN, PowerQuant, GPTQ (uniform/power) and NUPES.

Weights of nn.Linear / nn.Conv2d are replaced by their fake-quantized values in a deep copy
of the model; each quantized module carries `nupes_quant` (a QuantizedWeight: int8 codes,
float64 scales, exponent, bits, granularity, group_size, method) for exporters, and, with
`abits`, `nupes_act` (a PowerActQuant applied to its input by a forward pre-hook).

Report per layer: name, method, exponent, scales (min/max/mean), loss_before, loss_after,
loss_kind, seconds. The loss is the relative output MSE on the calibration inputs
mean((f(X_fp, W) − f(X_q, ŵ))²) / mean(f(X_fp, W)²) when calibration inputs reach the
layer ('output_rel_mse'), else the relative weight MSE ('weight_rel_mse'). loss_before is
the method's starting point on the same grid: uniform RTN for 'rtn'/'gptq', power RTN at the
layer's exponent for 'powerquant'/'gptq_power', the NUPES initialization for 'nupes'.
"""
import copy
import time
import warnings

import torch
from torch import nn

from .calibrate import PowerActQuant, as_batches, attach_act_quant, capture_inputs, execution_order
from .gptq import HessianAccumulator, gptq_layer, input_rows
from .nupes import EXPONENT_BOUNDS, NupesConfig, layer_forward, nupes_layer
from .powerquant import search_exponent
from .quantizer import PowerQuantizer, QuantizedWeight, check_finite_tensor

METHODS = ("rtn", "powerquant", "gptq", "gptq_power", "nupes")
SUPPORTED = (nn.Linear, nn.Conv2d)
SUPPORTED_NAMES = "nn.Linear, nn.Conv2d"


def _select(model, layers, skip, unsupported):
    """{name: module} to quantize, and names left in float (unsupported, unsupported='float')."""
    named = dict(model.named_modules())
    if layers is None:
        chosen = {n: m for n, m in named.items() if isinstance(m, SUPPORTED)}
    else:
        if isinstance(layers, str) or isinstance(layers, type):
            layers = [layers]
        chosen = {}
        for sel in layers:
            if isinstance(sel, type):
                chosen.update({n: m for n, m in named.items() if isinstance(m, sel)})
            elif isinstance(sel, str):
                if sel not in named:
                    raise ValueError(f"layers: no module named {sel!r} in the model")
                chosen[sel] = named[sel]
            else:
                raise TypeError(f"layers entries must be module names or nn.Module types, got {sel!r}")
    if skip is not None:
        if callable(skip):
            chosen = {n: m for n, m in chosen.items() if not skip(n, m)}
        else:
            names = {skip} if isinstance(skip, str) else set(skip)
            chosen = {n: m for n, m in chosen.items() if n not in names}
    left = []
    for n, m in list(chosen.items()):
        if not isinstance(m, SUPPORTED):
            msg = (f"layer {n!r} ({type(m).__name__}) cannot be quantized: supported layer types are "
                   f"{SUPPORTED_NAMES}")
            if unsupported == "error":
                raise ValueError(msg + "; pass unsupported='float' to leave it in float")
            warnings.warn(msg + "; left in float", stacklevel=3)
            left.append(n)
            del chosen[n]
    return chosen, left


def _rel_output_loss(module, x_fp, x_q, w, w_hat):
    f = layer_forward(module)
    with torch.no_grad():
        y = f(x_fp.double(), w)
        d = f(x_q.double(), w_hat) - y
        return float((d * d).mean()) / (float((y * y).mean()) or 1.0)


def _rel_weight_loss(w, w_hat):
    return float(((w_hat - w) ** 2).mean()) / (float((w * w).mean()) or 1.0)


def quantize_model(model, method="nupes", wbits=4, abits=None, calib=None, granularity="channel", group_size=None,
                   mode="sequential", steps=None, seed=0, progress=True, skip=None, unsupported="error", layers=None,
                   exponent=None, exponent_search="network", actorder=False, blocksize=128, percdamp=0.01,
                   nupes_init="powerquant", nupes_config=None, batch_size=64):
    """Quantize the Linear/Conv2d weights of `model` (and optionally the inputs of those layers).

    method: 'rtn' (uniform RTN), 'powerquant' (power RTN, data-free exponent search),
    'gptq' (uniform GPTQ), 'gptq_power' (GPTQ on the PowerQuant grid), 'nupes'.
    wbits/abits: weight/activation bits (abits None: float activations). calib: a tensor
    (split into `batch_size` batches) or an iterable of input batches; required for 'gptq',
    'gptq_power' and abits, optional for 'nupes' (None: data-free NUPES).
    mode: 'sequential' (a layer sees the inputs of the partly quantized model) or 'parallel'
    (the float model's). steps: NUPES steps (default NupesConfig.steps). exponent: fixed
    exponent for the power methods (else searched per 'network' or per 'layer').
    skip: callable(name, module) -> bool or names to leave in float. layers: names or
    module types to quantize (default: every Linear/Conv2d); asking for an unsupported type
    raises (unsupported='error') or leaves it in float with a warning ('float').
    Returns (qmodel, report).
    """
    t_start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not allowed; choose one of {list(METHODS)}")
    if mode not in ("sequential", "parallel"):
        raise ValueError(f"mode={mode!r} is not allowed; choose 'sequential' or 'parallel'")
    if unsupported not in ("error", "float"):
        raise ValueError(f"unsupported={unsupported!r} is not allowed; choose 'error' or 'float'")
    if exponent_search not in ("network", "layer"):
        raise ValueError(f"exponent_search={exponent_search!r} is not allowed; choose 'network' or 'layer'")
    if nupes_init not in ("powerquant", "gptq_power"):
        raise ValueError(f"nupes_init={nupes_init!r} is not allowed; choose 'powerquant' or 'gptq_power'")
    PowerQuantizer(wbits, True, 1.0, granularity, group_size)  # validates bits/granularity/group_size
    if abits is not None:
        PowerQuantizer(abits, True, 1.0, "tensor")
    if exponent is not None:
        PowerQuantizer(wbits, True, exponent, granularity, group_size)
    config = copy.deepcopy(nupes_config) if nupes_config is not None else NupesConfig()
    if steps is not None:
        config.steps = steps
    config.check()
    batches = as_batches(calib, batch_size)
    if batches is None and (method in ("gptq", "gptq_power") or abits is not None
                            or (method == "nupes" and nupes_init == "gptq_power")):
        what = f"method={method!r}" if abits is None else f"abits={abits}"
        raise ValueError(f"{what} needs calibration data: pass calib=")
    torch.manual_seed(seed)

    was_training = model.training
    model.eval()
    try:
        qmodel = copy.deepcopy(model).eval()
        targets, left_float = _select(qmodel, layers, skip, unsupported)
        fmodules = dict(model.named_modules())
        for n, m in targets.items():
            check_finite_tensor(f"layer {n!r}: weight", m.weight.detach())
            PowerQuantizer(wbits, True, 1.0, granularity, group_size).blocks_shape(m.weight.shape)
            if m.bias is not None:
                check_finite_tensor(f"layer {n!r}: bias", m.bias.detach())
        if batches is not None:
            first = next(iter(targets), None)
            for i, b in enumerate(batches):
                if b.is_floating_point():
                    check_finite_tensor(f"calibration batch {i} (first quantized layer {first!r})", b)
            order = execution_order(model, {n: fmodules[n] for n in targets}, batches[0])
            order += [n for n in targets if n not in order]
        else:
            order = list(targets)

        # exponent of the power grid
        power = method in ("powerquant", "gptq_power", "nupes")
        net_exponent = None
        if power and exponent is None and exponent_search == "network" and targets:
            net_exponent = search_exponent([targets[n].weight for n in order], wbits, granularity, group_size,
                                           bounds=EXPONENT_BOUNDS, names=order).exponent
        report = dict(method=method, wbits=wbits, abits=abits, granularity=granularity, group_size=group_size,
                      mode=mode if batches is not None else "data-free", exponent=exponent or net_exponent,
                      layers=[], float_layers=left_float, activations={})

        try:
            from tqdm.auto import tqdm
            it = tqdm(order, desc=f"quantize ({method})", disable=not progress, unit="layer")
        except ImportError:  # pragma: no cover
            it = order
        for n in it:
            t0 = time.perf_counter()
            mod = targets[n]
            w = mod.weight.detach().to(torch.float64)
            x_fp = x_q = None
            if batches is not None:
                x_fp = capture_inputs(model, fmodules[n], batches, n)
                if x_fp is not None:
                    x_q = x_fp if mode == "parallel" else capture_inputs(qmodel, mod, batches, n)
            if abits is not None and x_q is not None:
                act = PowerActQuant.calibrate(x_q, abits, seed=seed, name=f"layer {n!r}: input")
                x_q = act(x_q)
                attach_act_quant(mod, act)
                report["activations"][n] = dict(bits=act.bits, signed=act.signed, exponent=act.exponent,
                                                scale=act.scale)
            if method in ("rtn", "gptq"):
                a = 1.0
            elif exponent is not None:
                a = float(exponent)
            elif net_exponent is not None:
                a = net_exponent
            else:
                a = search_exponent(w, wbits, granularity, group_size, bounds=EXPONENT_BOUNDS).exponent
            q = PowerQuantizer(wbits, True, a, granularity, group_size)
            s = q.scales(w)
            base = QuantizedWeight.from_codes(q, q.encode(w, s), s, "rtn" if a == 1.0 else "powerquant")
            info = {}
            if method in ("rtn", "powerquant"):
                qw = base
            elif method in ("gptq", "gptq_power") or (method == "nupes" and nupes_init == "gptq_power"):
                if x_q is None:
                    warnings.warn(f"layer {n!r} is not reached by the calibration data: RTN on its grid instead of GPTQ",
                                  stacklevel=2)
                    qw = base
                else:
                    rows = input_rows(mod, x_q.to(torch.float64))
                    hs = []
                    for r in rows:
                        acc = HessianAccumulator(r.shape[1])
                        acc.add(r, n)
                        hs.append(acc.H)
                    qw = gptq_layer(mod, hs, wbits, a, granularity, group_size, blocksize, percdamp, actorder,
                                    name=n, method="gptq" if a == 1.0 else "gptq_power")
                if method == "nupes":
                    base = qw
            if method == "nupes":
                qw, info = nupes_layer(mod, wbits, granularity, group_size, init=base, x_fp=x_fp, x_q=x_q,
                                       config=config, name=n, seed=seed)
            w_hat = qw.decode()
            check_finite_tensor(f"layer {n!r}: quantized weight", w_hat)
            if x_fp is not None:
                before = _rel_output_loss(mod, x_fp, x_q, w, base.decode())
                after = _rel_output_loss(mod, x_fp, x_q, w, w_hat)
                kind = "output_rel_mse"
            else:
                before, after, kind = _rel_weight_loss(w, base.decode()), _rel_weight_loss(w, w_hat), "weight_rel_mse"
            with torch.no_grad():
                mod.weight.copy_(w_hat.to(mod.weight.dtype))
            mod.nupes_quant = qw
            sc = qw.scales
            report["layers"].append(dict(
                name=n, method=method, type=type(mod).__name__, shape=tuple(mod.weight.shape), exponent=qw.exponent,
                scale=dict(min=float(sc.min()), max=float(sc.max()), mean=float(sc.mean()), count=sc.numel()),
                loss_before=before, loss_after=after, loss_kind=kind,
                calibrated=x_fp is not None, seconds=time.perf_counter() - t0,
                **({"nupes": info} if info else {})))
        report["seconds"] = time.perf_counter() - t_start
        return qmodel, report
    finally:
        model.train(was_training)
