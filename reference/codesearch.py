"""Exact searches on hard codes for the layer objective (objective.py): the levels of a
power grid, coordinate descent over the whole code range, and a 1-D exponent refinement.

Levels: for exponent a and per-slice magnitude m (the value the largest code decodes to),
the scale is the contract's s = m^a / M (all-zero slices, m = 0: s = 1, codes stay 0) and
level l ∈ [−M, M] (full range: [−(M+1), M]; a table of L levels starts at −(L//2)) decodes to sign(l)·(s·|l|)^(1/a), evaluated with the quantizer's own pow
kernel, so a weight gathered from the level table is bit for bit `QuantizedWeight.decode`.

Coordinate descent: the loss is a quadratic form in ŵ with rows independent given H, so
for column j and every row at once the change of L when ŵ[:, j] moves by δ is
H_jj·δ² + 2δ·R[:, j] (R = D·H + G₀, the current residual). Each sweep visits the columns in
order, moves every row's code to the best of *all* levels (not only ±1) when that
lowers the loss by more than a relative 1e-12, and updates R by a rank-1 product. The loss
never increases; it is recomputed exactly at the end.
"""

import math

import torch

from .quantizer import _t_pow


def scales_for(m, a, M):
    """(R, G) contract scales s = m^a/M for magnitudes m (R, G); 1 where m = 0."""
    s = _t_pow(m, a) / M
    return torch.where(m > 0, s, torch.ones_like(s))


def levels(m, a, M, full_range=False):
    """(R, G, L) float64 decoded value of every code −M..M (L = 2M+1), or −(M+1)..M with
    full_range (L = 2M+2), for each slice. Code c sits at index c + L//2."""
    s = scales_for(m, a, M)
    c = torch.arange(-M - int(bool(full_range)), M + 1, dtype=torch.float64)
    mag = _t_pow(s.unsqueeze(-1) * c.abs(), 1.0 / a)
    return torch.sign(c) * mag


def gather(lv, codes, shape_rgg):
    """Decoded weight (R, G, g) of integer codes (R, G, g) from the level table (R, G, L)."""
    R, G, g = shape_rgg
    idx = codes.reshape(R, G, g).to(torch.int64) + lv.shape[-1] // 2
    return torch.gather(lv.expand(R, G, -1) if lv.shape[0] != R else lv, 2, idx)


def coordinate_descent(obj, codes, lv, shape_rgg, sweeps=1):
    """Improve hard codes (R, G, g) on `obj` by exact coordinate descent (module doc).

    Returns (codes, loss, moved) with codes int64 (R, G, g), the exact loss and the number
    of accepted code changes."""
    R, G, g = shape_rgg
    C, K = obj.W.shape
    codes = codes.reshape(R, G, g).to(torch.int64).clone()
    what = gather(lv, codes, shape_rgg).reshape(C, K)
    D = what - obj.W
    Res = obj.residual(D)
    off = lv.shape[-1] // 2  # index of code 0 (levels())
    tol = 1e-12 * obj.norm
    # per (row of W, column) the level table row: tensor → row 0; channel → row r; group → (r, j // g)
    lvr = lv.expand(C, G, -1) if lv.shape[0] != C else lv
    cflat = codes.reshape(C, K)
    moved = 0
    for _ in range(sweeps):
        changed = 0
        for gi, H in enumerate(obj.hessians):
            r0, r1 = gi * obj.O, (gi + 1) * obj.O
            diag = torch.diagonal(H)
            for j in range(K):
                hjj = float(diag[j])
                if hjj <= 0:
                    continue
                grp = j // g if G > 1 else 0
                cand = lvr[r0:r1, grp, :]
                delta = cand - what[r0:r1, j : j + 1]
                dl = delta * (hjj * delta + 2.0 * Res[r0:r1, j : j + 1])
                gain, best = torch.min(dl, 1)
                mask = gain < -tol
                if not bool(mask.any()):
                    continue
                d = torch.where(mask, delta.gather(1, best.unsqueeze(1)).squeeze(1), torch.zeros_like(gain))
                newc = torch.where(mask, best - off, cflat[r0:r1, j])
                changed += int(mask.sum())
                cflat[r0:r1, j] = newc
                what[r0:r1, j] = torch.where(
                    mask, cand.gather(1, best.unsqueeze(1)).squeeze(1), what[r0:r1, j]
                )
                Res[r0:r1] += d.unsqueeze(1) * H[j].unsqueeze(0)
        moved += changed
        if changed == 0:
            break
    loss = obj.value(what)
    return cflat.reshape(R, G, g), loss, moved


def hard_loss(obj, m, a, M, codes, shape_rgg, full_range=False):
    """Exact loss of hard codes at exponent a (scales follow a: s = m^a/M)."""
    return obj.value(gather(levels(m, a, M, full_range), codes, shape_rgg))


def refine_exponent(obj, m, M, codes, shape_rgg, a0, bounds, width=0.05, iters=14, full=False):
    """Golden-section search of L(a) with the codes fixed on [a0 − width, a0 + width] ∩ bounds.
    Returns (a, loss) of the best point evaluated, a0 included."""
    lo, hi = max(bounds[0], a0 - width), min(bounds[1], a0 + width)
    cache = {}

    def f(a):
        if a not in cache:
            cache[a] = hard_loss(obj, m, a, M, codes, shape_rgg, full)
        return cache[a]

    f(a0)
    r = (math.sqrt(5) - 1) / 2
    x1, x2 = hi - r * (hi - lo), lo + r * (hi - lo)
    for _ in range(iters):
        if f(x1) < f(x2):
            hi, x2 = x2, x1
            x1 = hi - r * (hi - lo)
        else:
            lo, x1 = x1, x2
            x2 = lo + r * (hi - lo)
    a = min(cache, key=lambda k: (cache[k], abs(k - a0)))
    return a, cache[a]


def refine_magnitudes(obj, m, a, M, codes, shape_rgg, full_range=False, rounds=1):
    """Exact per-slice magnitude (scale) refinement with the codes fixed.

    With codes and exponent fixed, a slice's decoded weights are m·u (u = the unit-magnitude
    level of each code, `levels(1, a, M)`), so the loss is a quadratic in the slice's m:
    moving m by t changes D by t·u_slice and L·norm by 2t⟨u, R⟩ + t²⟨u, u·H⟩ (R = D·H + G₀).
    Each round visits the slices' groups in order (Gauss-Seidel: channel granularity has
    one group per row, so one round is the exact per-row optimum; tensor sums over rows)
    and moves m to the minimizer where it stays > 0. Then the exact loss of the level table
    at the new magnitudes (the contract decode of s = m^a/M) is compared with the old one
    and the new m kept only where it is lower. Returns (m, loss)."""
    R, G, g = shape_rgg
    C, K = obj.W.shape
    unit = levels(torch.ones(1, 1, dtype=torch.float64), a, M, full_range)  # (1, 1, L)
    U = gather(unit, codes, shape_rgg).reshape(C, K)
    l_old = hard_loss(obj, m, a, M, codes, shape_rgg, full_range)
    m_new = m.clone()
    for _ in range(rounds):
        D = gather(levels(m_new, a, M, full_range), codes, shape_rgg).reshape(C, K) - obj.W
        Res = obj.residual(D)
        for gi in range(G):
            cols = slice(gi * g, (gi + 1) * g) if G > 1 else slice(0, K)
            P = _rows_times_h(obj, U[:, cols], cols)
            quad = (P[:, cols] * U[:, cols]).sum(1)
            lin = (U[:, cols] * Res[:, cols]).sum(1)
            if R != C:
                quad, lin = quad.sum(0, keepdim=True), lin.sum(0, keepdim=True)
            ok = quad > 0
            t = torch.where(ok, -lin / torch.where(ok, quad, torch.ones_like(quad)), torch.zeros_like(quad))
            cur = m_new[:, gi]
            t = torch.where(cur + t > 0, t, torch.zeros_like(t))
            m_new[:, gi] = cur + t
            tt = t if R == C else t.expand(C)
            Res += tt.unsqueeze(1) * P
    l_new = hard_loss(obj, m_new, a, M, codes, shape_rgg, full_range)
    if l_new < l_old:
        return m_new, l_new
    return m, l_old


def _rows_times_h(obj, Uc, cols):
    """(C, K) = Uc · H[cols, :] per conv group (Uc holds the columns `cols` of a (C, K) matrix)."""
    parts = [Uc[gi * obj.O : (gi + 1) * obj.O] @ H[cols, :] for gi, H in enumerate(obj.hessians)]
    return torch.cat(parts, 0) if len(parts) > 1 else parts[0]
