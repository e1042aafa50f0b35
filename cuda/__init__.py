"""nupes_sim.cuda: numba.cuda backend of the integer simulator.

This folder is installed as ``nupes_sim.cuda``. When the repository root is on sys.path
(``python -c`` from the root, a notebook started there) it is also visible as a top-level
``cuda`` package, which would shadow NVIDIA's ``cuda`` namespace package (cuda.bindings,
cuda.core) that numba-cuda imports. extend_path keeps both importable: never add
``bindings``, ``core`` or ``pathfinder`` inside this folder.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
