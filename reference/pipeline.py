"""One call from a PyTorch model to an exported integer graph: load, fold batch norm,
quantize (any method of `quantize_model`), calibrate activations, export.

Used by `nupes-sim quantize` and `nupes-sim demo`; the Python API is the same:

    exported, report = quantize_to_graph("model.pt", arch="fashion-resnet", calib=x, method="nupes")
    exported.graph.run(exported.encode_input(x), backend="cpu")

`calib` may be a NumPy array or a tensor of any real dtype (cast to the model's dtype).
"""

import warnings
from pathlib import Path

import numpy as np
import torch

ARCHS = ("fashion-resnet",)


def _class_from_spec(spec):
    """The nn.Module class named by 'package.module:ClassName' (imported)."""
    import importlib

    mod_name, _, cls_name = spec.partition(":")
    if not mod_name or not cls_name:
        raise ValueError(
            f"arch={spec!r}: expected a built-in name {list(ARCHS)} or 'package.module:ClassName'"
        )
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"arch={spec!r}: cannot import {mod_name!r} ({e}); is it on PYTHONPATH?") from None
    cls = getattr(mod, cls_name, None)
    if not isinstance(cls, type) or not issubclass(cls, torch.nn.Module):
        raise ValueError(f"arch={spec!r}: {mod_name} has no nn.Module class {cls_name!r}")
    return cls


def _sniff(path):
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not head:
        raise ValueError(f"model file {path} is empty")
    if head.startswith(b"\x89HDF"):
        raise ValueError(
            f"model file {path} is an HDF5 file (a nupes-sim model or golden file?); quantize takes "
            f"a PyTorch state dict (.pt) or a torch.export program (.pt2)"
        )
    return head


def load_user_model(model, arch=None):
    """An nn.Module from: an nn.Module; a saved torch.export program (.pt2); or a state dict
    file plus an architecture (`arch`: a built-in name, or 'package.module:ClassName' whose
    constructor takes no arguments). The shipped Fashion-MNIST checkpoint is
    `"fashion-resnet"` with no arch."""
    from .evaluate import load_fashion_model
    from .models import FashionResNet

    if isinstance(model, torch.nn.Module):
        return model.eval()
    if model == "fashion-resnet" and arch is None:
        return load_fashion_model().eval()
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    head = _sniff(path)
    if path.suffix == ".pt2":
        if arch is not None:
            raise ValueError(f"{path}: a torch.export program carries its own architecture; drop --arch")
        try:
            ep = torch.export.load(str(path))
        except Exception as e:
            raise ValueError(
                f"{path}: not a readable torch.export program ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''})"
            ) from None
        from .from_export import module_from_export

        return module_from_export(ep)
    if arch is None:
        raise ValueError(
            f"{path}: a state dict needs --arch, one of {list(ARCHS)} or 'package.module:ClassName' "
            f"(or save a torch.export program as .pt2)"
        )
    if arch in ARCHS:
        cls = FashionResNet
    elif ":" in arch:
        cls = _class_from_spec(arch)
    else:
        raise ValueError(
            f"arch={arch!r} is not a built-in architecture; choose one of {list(ARCHS)} "
            f"or give 'package.module:ClassName'"
        )
    if not head.startswith(b"PK"):
        raise ValueError(f"{path} is not a PyTorch state dict file (torch.save writes a zip archive)")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"{path}: cannot read the state dict ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    try:
        net = cls()
    except Exception as e:
        raise ValueError(f"arch={arch!r}: {cls.__name__}() failed ({type(e).__name__}: {e})") from None
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path} does not fit the {arch} architecture: {str(e).splitlines()[0]}") from None
    return net.eval()


def load_calibration(path, dataset=None):
    """Float calibration inputs (float32 tensor) from .npy or .h5 (dataset name, or the only
    dataset); any real dtype (float64 included) is accepted. ValueError for anything else."""
    from nupes_sim.cli_checks import CliError, load_array

    try:
        arr = load_array(path, dataset, "calibration file", "iuf", None)
    except CliError as e:
        raise ValueError(str(e)) from None
    if arr.ndim < 2:
        raise ValueError(
            f"{path}: calibration data of shape {arr.shape}; expected (batch, ...) with batch first"
        )
    if np.abs(arr).max() > np.finfo(np.float32).max:
        raise ValueError(f"{path}: calibration values exceed the float32 range")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def as_calibration(calib, model=None):
    """A calibration batch (NumPy array or tensor, any real dtype) as a tensor of the model's
    floating dtype (float32 for most models), checked finite; None stays None."""
    if calib is None:
        return None
    if isinstance(calib, np.ndarray):
        if calib.dtype.kind not in "iuf":
            raise TypeError(f"calibration array of dtype {calib.dtype}; expected real numbers")
        calib = torch.from_numpy(np.ascontiguousarray(calib))
    if not torch.is_tensor(calib):
        return calib  # an iterable of batches: quantize_model checks them
    if not (
        calib.is_floating_point()
        or calib.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
    ):
        raise TypeError(f"calibration tensor of dtype {calib.dtype}; expected real numbers")
    dtype = torch.float32
    if model is not None:
        p = next((t for t in model.parameters() if t.is_floating_point()), None)
        dtype = p.dtype if p is not None else dtype
    calib = calib.to(dtype)
    if not torch.isfinite(calib).all():
        raise ValueError("calibration data must be finite numbers")
    return calib


def _check_calibration_fits(net, calib):
    """Run one calibration sample through the float model first: a wrong shape is one clear
    error before any quantization work."""
    if calib is None or not torch.is_tensor(calib):
        return
    try:
        with torch.no_grad():
            net(calib[:1])
    except Exception as e:
        raise ValueError(
            f"calibration data of shape {tuple(calib.shape)} does not fit the model: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None


#: calibration inputs used by quantize_to_graph (weights and activation formats alike)
CALIB_ROWS = 256


def quantize_to_graph(
    model,
    arch=None,
    calib=None,
    method="nupes",
    wbits=4,
    abits=8,
    granularity="channel",
    group_size=None,
    steps=None,
    datapath="operand",
    acc_width=48,
    overflow="saturate",
    export_calib=None,
    seed=0,
    progress=True,
    nupes_init=None,
    full_range=False,
):
    """(Exported, report): the model quantized by `method` and exported to integer layers.

    calib: float inputs for the data-driven methods and for activation calibration (the first
    CALIB_ROWS are used for both); data-driven methods optimize each layer against the
    activations the integer graph computes (quantize_for_export). With calib=None the weights
    are quantized data-free (NUPES: under the input statistics of the model's batch norms,
    datafree.py) and `export_calib` must still give a few inputs to calibrate activation
    formats (hardware needs activation codes). full_range: signed weight codes
    [-2^(b-1), 2^(b-1)-1] (quantize_model's option).
    """
    from nupes_sim.layers import Accumulator

    from .export import ExportConfig, _trace_ops
    from .fold import fold_batchnorm

    user = load_user_model(model, arch)
    _trace_ops(user, before_folding=True)  # every unsupported op listed in one error, before any work
    net = fold_batchnorm(user)
    calib, export_calib = as_calibration(calib, net), as_calibration(export_calib, net)
    _check_calibration_fits(net, calib if calib is not None else export_calib)
    extra = {}
    if method == "nupes":
        extra["nupes_init"] = nupes_init or ("gptq_power" if calib is not None else "powerquant")
        if calib is None:  # data-free NUPES: the batch norms' statistics, where the model has some
            from .datafree import batchnorm_stats, bn_input_hessians

            if batchnorm_stats(user):
                try:
                    extra["input_hessians"] = bn_input_hessians(user)
                except ValueError as e:  # a construct the moment model does not cover (ReLU6)
                    warnings.warn(f"data-free NUPES uses the weight error: {e}", stacklevel=2)
    act_calib = calib if calib is not None else export_calib
    if act_calib is None:
        raise ValueError("activation formats need a few calibration inputs (calib or export_calib)")
    cfg = ExportConfig(
        datapath=datapath,
        act_bits=abits,
        acc=Accumulator(acc_width, overflow),
        act_exponent=1.0 if method in ("rtn", "gptq") else None,
    )
    return quantize_for_export(
        net,
        cfg,
        act_calib[:CALIB_ROWS],
        method=method,
        wbits=wbits,
        data_driven=calib is not None,
        granularity=granularity,
        group_size=group_size,
        steps=steps,
        seed=seed,
        progress=progress,
        full_range=full_range,
        **extra,
    )


def quantize_for_export(
    net, cfg, calib, method="nupes", wbits=4, data_driven=True, activation_aware=True, **kw
):
    """(Exported, report): quantize the weights of a folded `net`, then export it with `cfg`.

    calib: the calibration inputs of both the weight quantizer (when `data_driven`) and the
    activation formats. activation_aware (data-driven methods): the exporter's walk
    (export.ActivationWalk) drives the weight quantizer layer by layer, so every layer is
    optimized against the fake-quant input the integer graph will feed it, with the formats the
    graph will use (the walk is then finished into the graph); False: the weights see the float
    network's activations (sequential), and the exporter calibrates the activations afterwards.
    kw: more quantize_model arguments.
    """
    from .api import quantize_model
    from .export import ActivationWalk, export_model

    walk = {}

    def input_fn(name, qmodel):
        if "walk" not in walk:
            walk["walk"] = ActivationWalk(qmodel, calib, cfg)
        return walk["walk"].input_of(name)

    aware = data_driven and activation_aware
    qmodel, report = quantize_model(
        net,
        method=method,
        wbits=wbits,
        calib=calib if data_driven else None,
        input_fn=input_fn if aware else None,
        **kw,
    )
    report["activation_aware"] = aware
    w = walk.get("walk")
    if (
        w is not None and w.model is not qmodel
    ):  # pragma: no cover - quantize_model returns the model it quantized
        raise RuntimeError("internal: the activation walk ran on another model")
    return export_model(qmodel, calib, None if w else cfg, walk=w), report
