"""One call from a PyTorch model to an exported integer graph: load, fold batch norm,
quantize (any method of `quantize_model`), calibrate activations, export.

Used by `nupes-sim quantize` and `nupes-sim demo`; the Python API is the same:

    exported, report = quantize_to_graph("model.pt", arch="fashion-resnet", calib=x, method="nupes")
    exported.graph.run(exported.encode_input(x), backend="cpu")
"""
from pathlib import Path

import numpy as np
import torch

ARCHS = ("fashion-resnet",)


def load_user_model(model, arch=None):
    """An nn.Module from: an nn.Module; a saved torch.export program (.pt2); or a state dict
    file plus a built-in architecture name (`arch`). The shipped Fashion-MNIST checkpoint is
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
    if path.suffix == ".pt2":
        return torch.export.load(str(path)).module().eval()
    if arch is None:
        raise ValueError(f"{path}: a state dict needs --arch, one of {list(ARCHS)} (or save a torch.export program as .pt2)")
    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r} is not a built-in architecture; choose one of {list(ARCHS)}")
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    net = FashionResNet()
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path} does not fit the {arch} architecture: {str(e).splitlines()[0]}") from None
    return net.eval()


def load_calibration(path, dataset=None):
    """Float calibration inputs from .npy or .h5 (dataset name, or the only dataset)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"calibration file {path} does not exist")
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
    elif path.suffix in (".h5", ".hdf5"):
        import h5py
        with h5py.File(path, "r") as f:
            names = [k for k in f.keys() if isinstance(f[k], h5py.Dataset)]
            name = dataset or (names[0] if len(names) == 1 else None)
            if name is None or name not in f:
                raise ValueError(f"{path}: name the calibration dataset with --dataset; it has {names}")
            arr = f[name][()]
    else:
        raise ValueError(f"{path}: calibration data must be .npy or .h5")
    if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
        raise ValueError(f"{path}: calibration data must be finite numbers")
    return torch.from_numpy(np.asarray(arr, dtype=np.float32))


def quantize_to_graph(model, arch=None, calib=None, method="nupes", wbits=4, abits=8, granularity="channel",
                      group_size=None, steps=None, datapath="operand", acc_width=48, overflow="saturate",
                      export_calib=None, seed=0, progress=True, nupes_init=None):
    """(Exported, report): the model quantized by `method` and exported to integer layers.

    calib: float inputs for the data-driven methods and for activation calibration; with
    calib=None the weights are quantized data-free and `export_calib` must still give a few
    inputs to calibrate activation formats (hardware needs activation codes).
    """
    from nupes_sim.layers import Accumulator

    from .api import quantize_model
    from .export import ExportConfig, export_model
    from .fold import fold_batchnorm

    net = fold_batchnorm(load_user_model(model, arch))
    extra = {}
    if method == "nupes":
        extra["nupes_init"] = nupes_init or ("gptq_power" if calib is not None else "powerquant")
    qmodel, report = quantize_model(net, method=method, wbits=wbits, calib=calib, granularity=granularity,
                                    group_size=group_size, steps=steps, seed=seed, progress=progress, **extra)
    act_calib = calib if calib is not None else export_calib
    if act_calib is None:
        raise ValueError("activation formats need a few calibration inputs (calib or export_calib)")
    cfg = ExportConfig(datapath=datapath, act_bits=abits, acc=Accumulator(acc_width, overflow),
                       act_exponent=1.0 if method in ("rtn", "gptq") else None)
    return export_model(qmodel, act_calib[:256], cfg), report
