"""Per-layer cache of the fused path's weight-side plans (limbs, weight matrices, chunk bounds).

Why: preparing the weight side (decomposition, used keys, limb split, the int8/float weight
matrix) costs more than the GEMMs at small batches (measured: 7.6 ms of a 7.7 ms batch-1
1024x1024 linear call) and it depends only on the layer, the range of activation codes of
the call and the options. Layers are frozen dataclasses whose integer arrays are read-only
copies they own, so a plan built once stays valid for the layer object.

What makes a cached plan valid (checked at every lookup, cheap: no content hashing):
- the layer is the same object (weak key: the cache dies with the layer),
- every field of the layer is the same object as when the plan was built (a field replaced
  with ``object.__setattr__`` invalidates the layer's plans),
- every integer array the plans read (w_codes, w_table_index, bias and the tables' lut),
  and every array it is a view of, is read-only now. NumPy lets an owner flip its array back
  to writeable; if any of them is writeable the plan is built afresh and nothing is cached for the call, so contents changed
  through such an array can never meet a stale plan.
The key is (what, xmin, xmax, options); results never depend on the cache (the plan is the
same function of these inputs), and ``CpuOptions(cache_plans=False)`` turns it off (tests
compare both).
"""

import weakref
from collections import OrderedDict
from dataclasses import fields

import numpy as np

MAX_PLANS = 16  # per layer: activation ranges x options of one layer (LRU beyond)
_CACHE = weakref.WeakKeyDictionary()  # layer -> (field values, OrderedDict key -> plan)


def _arrays(layer):
    out = [layer.w_codes, layer.w_table_index, layer.bias]
    for t in (layer.w_table, layer.x_table, layer.p_table):
        if t is not None:
            out.append(t.lut)
    return out


def _read_only(a):
    """a and every array it is a view of are read-only (a writeable base could change a)."""
    while isinstance(a, np.ndarray):
        if a.flags.writeable:
            return False
        a = a.base
    return True


def _frozen(layer):
    return all(_read_only(a) for a in _arrays(layer))


def cached(layer, key, build, opts):
    """build() once per (layer, key) while the layer is unchanged (see the module docstring)."""
    if not opts.cache_plans or not _frozen(layer):
        return build()
    vals = tuple(getattr(layer, f.name) for f in fields(layer))
    ent = _CACHE.get(layer)
    if ent is None or len(ent[0]) != len(vals) or any(a is not b for a, b in zip(ent[0], vals)):
        ent = (vals, OrderedDict())
        _CACHE[layer] = ent
    plans = ent[1]
    if key in plans:
        plans.move_to_end(key)
        return plans[key]
    plan = build()
    plans[key] = plan
    while len(plans) > MAX_PLANS:
        plans.popitem(last=False)
    return plan


def clear():
    _CACHE.clear()
