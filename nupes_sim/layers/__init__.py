"""Integer layers: the integer tables and settings of each op (docs/ARITHMETIC.md §4–§8).

base.py holds the layer protocol (what every layer type declares about itself: stages, code
ranges, output shape, golden-file parameters, what feeds an output element) and the registry
`LAYER_TYPES`; mac.py the multiply-accumulate layers (mac_build.py their builders),
elementwise.py, pool.py and layout.py the others. Layers are frozen and validated at
construction (base.py). Every public name of those modules is importable from here.
"""

from .base import *  # noqa: F401,F403
from .base import __all__ as _base_all
from .elementwise import *  # noqa: F401,F403
from .elementwise import __all__ as _elementwise_all
from .layout import *  # noqa: F401,F403
from .layout import __all__ as _layout_all
from .mac import *  # noqa: F401,F403
from .mac import __all__ as _mac_all
from .pool import *  # noqa: F401,F403
from .pool import __all__ as _pool_all

__all__ = _base_all + _mac_all + _elementwise_all + _pool_all + _layout_all
