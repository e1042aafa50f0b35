"""quantize_model: one entry point for RTN, PowerQuant, GPTQ (uniform/power) and NUPES.

Weights of nn.Linear / nn.Conv2d are replaced by their fake-quantized values in a deep copy
of the model; each quantized module carries `nupes_quant` (a QuantizedWeight: int8 codes,
float64 scales, exponent, bits, granularity, group_size, method) for exporters, and, with
`abits`, `nupes_act` (a PowerActQuant applied to its input by a forward pre-hook).

Report per layer: name, method, exponent, scales (min/max/mean), loss_before, loss_after,
loss_kind, target, seconds. The loss is the layer objective of objective.py: the relative
output error ‖f(X_t, W) − f(X_q, ŵ)‖² / ‖f(X_t, W)‖² on the calibration inputs when they
reach the layer ('output_rel_mse'; X_t = X_fp for target 'float', X_q for 'local'), else
the relative weight error ('weight_rel_mse'). Every data-driven method of a layer uses one
objective: GPTQ takes its Hessian (and, for target 'float', quantizes the least-squares
target weight W*), NUPES starts from GPTQ-power and optimizes the same function. loss_before is
the method's starting point on the same grid: uniform RTN for 'rtn'/'gptq', power RTN at the
layer's exponent for 'powerquant'/'gptq_power', the NUPES initialization for 'nupes'.
"""

import copy
import time
import warnings

import torch
from torch import nn

from .baselines import FAKE_METHODS, fake_layer, gptq_asym_layer
from .calibrate import (
    PowerActQuant,
    as_batches,
    attach_act_quant,
    batches_key,
    capture_all_inputs,
    capture_inputs,
    execution_order,
)
from .codebooks import CODEBOOK_METHODS, codebook_layer
from .gptq import gptq_layer
from .nupes import EXPONENT_BOUNDS, NupesConfig, nupes_layer
from .objective import TARGETS, LayerObjective
from .powerquant import search_exponent
from .quantizer import PowerQuantizer, QuantizedWeight, check_finite_tensor

METHODS = ("rtn", "powerquant", "gptq", "gptq_power", "nupes") + tuple(FAKE_METHODS)
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
            msg = (
                f"layer {n!r} ({type(m).__name__}) cannot be quantized: supported layer types are "
                f"{SUPPORTED_NAMES}"
            )
            if unsupported == "error":
                raise ValueError(msg + "; pass unsupported='float' to leave it in float")
            warnings.warn(msg + "; left in float", stacklevel=3)
            left.append(n)
            del chosen[n]
    return chosen, left


def quantize_model(
    model,
    method="nupes",
    wbits=4,
    abits=None,
    calib=None,
    granularity="channel",
    group_size=None,
    mode="sequential",
    steps=None,
    seed=0,
    progress=True,
    skip=None,
    unsupported="error",
    layers=None,
    exponent=None,
    exponent_search="network",
    actorder=False,
    blocksize=128,
    percdamp=0.01,
    nupes_init="powerquant",
    nupes_config=None,
    batch_size=64,
    target=None,
    float_inputs=None,
    input_fn=None,
    input_hessians=None,
    full_range=False,
):
    """Quantize the Linear/Conv2d weights of `model` (and optionally the inputs of those layers).

    method: 'rtn' (uniform RTN), 'powerquant' (power RTN, data-free exponent search),
    'gptq' (uniform GPTQ), 'gptq_power' (GPTQ on the PowerQuant grid), 'nupes'; and the
    baselines: 'nf' (NormalFloat RTN, absmax per channel or group), 'gptq_nf' (GPTQ on the NF
    grid), 'kmeans' (Hessian-diagonal-weighted k-means per channel or (channel, group)),
    'gptq_kmeans' (GPTQ onto those centroids): their `nupes_quant` is a
    codebooks.CodebookWeight, the simulator's CodebookFormat (exportable); 'gptq_asym' (GPTQ
    on the reference's asymmetric zero-point grid; with granularity 'channel' its
    `nupes_quant` is a baselines.AsymWeight, the simulator's UniformWeightFormat; per group it
    is fake quantization only: no `nupes_quant`, not exportable).
    wbits/abits: weight/activation bits (abits None: float activations). calib: a tensor
    (split into `batch_size` batches; a NumPy array or any float dtype is accepted and cast to the
    model's dtype) or an iterable of input batches; required for 'gptq',
    'gptq_power' and abits, optional for 'nupes' (None: data-free NUPES).
    mode: 'sequential' (a layer sees the inputs of the partly quantized model) or 'parallel'
    (the float model's). steps: NUPES steps (default NupesConfig.steps). exponent: fixed
    exponent for the power methods (else searched per 'network' or per 'layer').
    skip: callable(name, module) -> bool or names to leave in float. layers: names or
    module types to quantize (default: every Linear/Conv2d); asking for an unsupported type
    raises (unsupported='error') or leaves it in float with a warning ('float').
    target: what the data-driven methods match (objective.py): 'float' (the float network's
    output from the quantized inputs, the sequential target) or 'local' (the float weights on
    the quantized inputs, classic GPTQ); None: 'local' for GPTQ, 'float' for NUPES. The
    report's loss_before/loss_after are that objective (same inputs, same target).
    float_inputs: an optional dict that caches the float network's layer inputs between
    calls on the same model and calibration batches (results.py shares it across methods).
    input_fn: callable(name, qmodel) -> the quantized input of layer `name` on the calibration
    data (rows in calibration order), called in execution order once the layers before it are
    quantized; it replaces the captured sequential input, so the weights are optimized against
    the activations it returns (export.ActivationWalk: the integer graph's). Needs calib and
    mode='sequential'; abits must be None (the activations are input_fn's).
    input_hessians: {layer name: [H per conv group]} data-free second moments of each layer's
    unfolded input (datafree.bn_input_hessians: from batch-norm statistics); layers that the
    calibration data does not reach (all of them with calib=None) then use the data-free
    objective LayerObjective(W, H) instead of the weight error.
    full_range: signed weight codes [-2^(b-1), 2^(b-1)-1] (2^b levels, ARITHMETIC.md §1) for the
    grid methods (rtn, powerquant, gptq, gptq_power, nupes); default scales max|w|^a/(M + 1/2).
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
    if target is not None and target not in TARGETS:
        raise ValueError(f"target={target!r} is not allowed; choose one of {list(TARGETS)} or None")
    if nupes_init not in ("powerquant", "gptq_power"):
        raise ValueError(f"nupes_init={nupes_init!r} is not allowed; choose 'powerquant' or 'gptq_power'")
    if input_fn is not None and (abits is not None or mode != "sequential" or calib is None):
        raise ValueError(
            "input_fn needs calib, mode='sequential' and abits=None (it supplies the activations)"
        )
    PowerQuantizer(wbits, True, 1.0, granularity, group_size, full_range)  # validates the weight spec
    if full_range and method in FAKE_METHODS:
        raise ValueError(
            f"full_range=True is not allowed with method={method!r}; allowed with "
            "rtn, powerquant, gptq, gptq_power and nupes (power-grid codes)"
        )
    if abits is not None:
        PowerQuantizer(abits, True, 1.0, "tensor")
    if exponent is not None:
        PowerQuantizer(wbits, True, exponent, granularity, group_size)
    config = copy.deepcopy(nupes_config) if nupes_config is not None else NupesConfig()
    if steps is not None:
        config.steps = steps
    config.check()
    p0 = next((p for p in model.parameters() if p.is_floating_point()), None)
    batches = as_batches(calib, batch_size, dtype=p0.dtype if p0 is not None else None)
    if (
        batches is None
        and (
            method in ("gptq", "gptq_power")
            or abits is not None
            or FAKE_METHODS.get(method)
            or (method == "nupes" and nupes_init == "gptq_power")
        )
        and not (input_hessians is not None and abits is None and method in ("gptq", "gptq_power", "nupes"))
    ):
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
            if float_inputs is None or float_inputs.get("_batches") != batches_key(batches):
                fp_all, fp_keys = capture_all_inputs(model, {n: fmodules[n] for n in targets}, batches)
                if float_inputs is not None:
                    float_inputs.clear()
                    float_inputs.update(_batches=batches_key(batches), inputs=fp_all, keys=fp_keys)
            else:
                fp_all, fp_keys = float_inputs["inputs"], float_inputs["keys"]
            shared_q = {}  # float-input key -> the quantized network's input captured for it
        else:
            order = list(targets)

        # exponent of the power grid
        power = method in ("powerquant", "gptq_power", "nupes")
        net_exponent = None
        if power and exponent is None and exponent_search == "network" and targets:
            net_exponent = search_exponent(
                [targets[n].weight for n in order],
                wbits,
                granularity,
                group_size,
                bounds=EXPONENT_BOUNDS,
                names=order,
                full_range=full_range,
            ).exponent
        report = dict(
            method=method,
            wbits=wbits,
            abits=abits,
            granularity=granularity,
            group_size=group_size,
            full_range=bool(full_range),
            mode=mode if batches is not None else "data-free",
            exponent=exponent or net_exponent,
            layers=[],
            float_layers=left_float,
            activations={},
        )

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
                x_fp = fp_all.get(n)
                if x_fp is not None and mode == "parallel":
                    x_q = x_fp
                elif x_fp is not None and input_fn is not None:
                    x_q = input_fn(n, qmodel)
                    if x_q is None or tuple(x_q.shape) != tuple(x_fp.shape):
                        raise ValueError(
                            f"input_fn: layer {n!r} got {None if x_q is None else tuple(x_q.shape)}, "
                            f"expected its calibration input shape {tuple(x_fp.shape)}"
                        )
                elif x_fp is not None:
                    # a tensor fed to several layers is computed before any of them runs, so
                    # quantizing one cannot change it for the others: capture it once
                    k = fp_keys.get(n)
                    x_q = shared_q.get(k)
                    if x_q is None or x_q.shape != x_fp.shape:
                        x_q = capture_inputs(qmodel, mod, batches, n)
                        shared_q[k] = x_q
            if abits is not None and x_q is not None:
                act = PowerActQuant.calibrate(x_q, abits, seed=seed, name=f"layer {n!r}: input")
                x_q = act(x_q)
                attach_act_quant(mod, act)
                report["activations"][n] = dict(
                    bits=act.bits, signed=act.signed, exponent=act.exponent, scale=act.scale
                )
            if method in ("rtn", "gptq") or method in FAKE_METHODS:
                a = 1.0
            elif exponent is not None:
                a = float(exponent)
            elif net_exponent is not None:
                a = net_exponent
            else:
                a = search_exponent(
                    w, wbits, granularity, group_size, bounds=EXPONENT_BOUNDS, full_range=full_range
                ).exponent
            q = PowerQuantizer(wbits, True, a, granularity, group_size, full_range)
            s = q.scales(w)
            base = QuantizedWeight.from_codes(q, q.encode(w, s), s, "rtn" if a == 1.0 else "powerquant")
            tgt = target or ("float" if method == "nupes" else "local")
            if x_fp is not None:
                obj = LayerObjective.from_inputs(mod, x_fp, x_q, tgt, n)
            elif input_hessians is not None and n in input_hessians:
                obj = LayerObjective(w, input_hessians[n], kind="datafree_rel_mse", name=n)
            else:
                obj = LayerObjective.weight_error(mod, n)
            info = {}
            exportable_asym = method == "gptq_asym" and granularity == "channel"
            if exportable_asym:  # the standard grid per channel: codes + (scale, zero point) per row
                base = gptq_asym_layer(mod, obj.hessians, wbits, name=n, calibrated=False)
                if x_fp is not None:
                    qw = gptq_asym_layer(
                        mod, obj.hessians, wbits, obj.target_weight(percdamp), blocksize, percdamp, n
                    )
                else:
                    qw = base
            elif method in CODEBOOK_METHODS:  # NF / k-means tables: the simulator's CodebookFormat
                base, qw = codebook_layer(
                    method, mod, obj, wbits, granularity, group_size, x_fp is not None, blocksize, percdamp, n
                )
            elif method in FAKE_METHODS:  # fake quantization only: no nupes_quant, not exportable
                w_hat, start = fake_layer(
                    method, mod, obj, wbits, granularity, group_size, x_fp is not None, blocksize, percdamp, n
                )
                check_finite_tensor(f"layer {n!r}: quantized weight", w_hat)
                with torch.no_grad():
                    mod.weight.copy_(w_hat.to(mod.weight.dtype))
                report["layers"].append(
                    dict(
                        name=n,
                        method=method,
                        type=type(mod).__name__,
                        shape=tuple(mod.weight.shape),
                        exponent=None,
                        scale=None,
                        loss_before=obj.value(start),
                        loss_after=obj.value(w_hat),
                        loss_kind=obj.kind,
                        calibrated=x_fp is not None,
                        target=tgt if x_fp is not None else None,
                        fake_quant_only=True,
                        seconds=time.perf_counter() - t0,
                    )
                )
                continue
            if exportable_asym or method in CODEBOOK_METHODS:
                pass
            elif method in ("rtn", "powerquant"):
                qw = base
            elif method in ("gptq", "gptq_power") or (method == "nupes" and nupes_init == "gptq_power"):
                if x_q is None and obj.kind == "datafree_rel_mse":
                    qw = gptq_layer(  # data-free GPTQ: the modelled input second moments as Hessian
                        mod,
                        obj.hessians,
                        wbits,
                        a,
                        granularity,
                        group_size,
                        blocksize,
                        percdamp,
                        actorder,
                        name=n,
                        method="gptq" if a == 1.0 else "gptq_power",
                        full_range=full_range,
                    )
                elif x_q is None:
                    warnings.warn(
                        f"layer {n!r} is not reached by the calibration data: RTN on its grid instead of GPTQ",
                        stacklevel=2,
                    )
                    qw = base
                else:
                    qw = gptq_layer(
                        mod,
                        obj.hessians,
                        wbits,
                        a,
                        granularity,
                        group_size,
                        blocksize,
                        percdamp,
                        actorder,
                        name=n,
                        method="gptq" if a == 1.0 else "gptq_power",
                        weight=obj.target_weight(percdamp),
                        full_range=full_range,
                    )
                if method == "nupes":
                    base = qw
            if method == "nupes":
                qw, info = nupes_layer(
                    mod,
                    wbits,
                    granularity,
                    group_size,
                    init=base,
                    objective=obj,
                    config=config,
                    name=n,
                    seed=seed,
                    full_range=full_range,
                )
            w_hat = qw.decode()
            check_finite_tensor(f"layer {n!r}: quantized weight", w_hat)
            before, after, kind = obj.value(base.decode()), obj.value(w_hat), obj.kind
            with torch.no_grad():
                mod.weight.copy_(w_hat.to(mod.weight.dtype))
            mod.nupes_quant = qw
            sc = qw.scales
            report["layers"].append(
                dict(
                    name=n,
                    method=method,
                    type=type(mod).__name__,
                    shape=tuple(mod.weight.shape),
                    exponent=qw.exponent,
                    scale=dict(
                        min=float(sc.min()), max=float(sc.max()), mean=float(sc.mean()), count=sc.numel()
                    ),
                    loss_before=before,
                    loss_after=after,
                    loss_kind=kind,
                    calibrated=x_fp is not None,
                    target=tgt if x_fp is not None else None,
                    seconds=time.perf_counter() - t0,
                    **({"nupes": info} if info else {}),
                )
            )
        report["seconds"] = time.perf_counter() - t_start
        return qmodel, report
    finally:
        model.train(was_training)
