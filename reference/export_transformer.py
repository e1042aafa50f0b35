"""Export the shipped transformers (CharTransformer, MiniLM) to the integer simulator.

torch.fx cannot trace the shipped CharTransformer (its forward branches on the sequence
length and builds the causal mask from it), so this exporter follows the modules' known
structure instead, for a sequence length T fixed at export (hardware compiles for one; the
batch axis stays free). It produces, as `reference.export` does for CNNs, one op list with
two views: the integer `Graph` (ARITHMETIC.md §8, §10-§16) and a float64 fake-quant twin
running the same ops on decoded weights with the same activation quantizers.

Value layout: the residual stream is (B·T, C) so every nn.Linear is a §8 `Linear`;
attention reshapes to (B, H, T, D) with layout ops. Activation formats are calibrated on
the twin's own float64 run (power formats, exponent searched per tensor; attention scores
uniform, as §13 requires).
"""

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from nupes_sim.formats import UniformFormat
from nupes_sim.graph import Graph, Node
from nupes_sim.layers import Accumulator, Add, Linear
from nupes_sim.transformer.layers import (
    ElementwiseTable,
    Embedding,
    LayerNorm,
    MatMul,
    PadMask,
    Reshape,
    Slice,
    Softmax,
    Transpose,
)
from nupes_sim.transformer.tables import FUNCTIONS

from .export import _frac_bits, _product_max, _table_max, _weight_codes, calibrate_format


@dataclass
class TransformerExportConfig:
    """Integer settings; *_lut_bits are magnitude bits of the largest table entry."""

    datapath: str = "operand"
    act_bits: int = 8
    score_bits: int = 8
    w_lut_bits: int = 20
    x_lut_bits: int = 16
    p_lut_bits: int = 24
    add_lut_bits: int = 16
    exp_frac_bits: int = 15
    prob_bits: int = 15
    acc: Accumulator = field(default_factory=lambda: Accumulator(48, "saturate"))
    act_exponent: float = None
    rounding: str = "half_even"


@dataclass
class _Op:
    name: str
    inputs: tuple
    f: object  # float64 function of the input values (torch tensors)
    out: str  # 'power' | 'power_unsigned' | 'uniform' | 'pass' | 'last' | 'fixed'
    make: object  # (formats dict, config) -> integer layer
    fmt: object = None  # for out == 'fixed': the format, known before calibration


def _q(fmt, t):
    a = t.detach().double().cpu().numpy()
    return torch.from_numpy(fmt.decode_real(fmt.encode(a)))


class _Builder:
    def __init__(self, cfg, T):
        self.cfg, self.T, self.ops, self.tid = cfg, T, [], 0

    def op(self, name, inputs, f, out, make, fmt=None):
        self.ops.append(_Op(name, tuple(inputs), f, out, make, fmt))
        return name

    def _next_tid(self):
        self.tid += 4
        return self.tid % 2**32

    # -- ops ------------------------------------------------------------------------------------
    def embedding(self, name, weight, src, positional=False):
        w = weight.detach().double().numpy()
        if positional:
            w = w[: self.T]
        fmt = calibrate_format(w, self.cfg.act_bits, True, self.cfg.act_exponent)
        table = torch.from_numpy(fmt.decode_real(fmt.encode(w)))
        T = self.T

        def f(ids):
            idx = torch.arange(ids.shape[-1]).expand_as(ids) if positional else ids
            return table[idx].reshape(-1, T, table.shape[1])

        return self.op(
            name, [src], f, "fixed", lambda fm, c: Embedding.build(name, w, fmt, c.rounding, positional), fmt
        )

    def add(self, name, a, b):
        def make(fm, c):
            fa, fb = fm[a], fm[b]
            return Add.build(
                name,
                fa,
                fb,
                frac_bits=_frac_bits(2 * max(_table_max(fa), _table_max(fb)), c.add_lut_bits),
                acc=c.acc,
                out_fmt=fm[name],
                rounding=c.rounding,
                tensor_id=self._next_tid(),
            )

        return self.op(name, [a, b], lambda x, y: x + y, "power", make)

    def layernorm(self, name, mod, src):
        return self.norm(name, src, mod.weight, mod.bias, mod.eps)

    def norm(self, name, src, weight, bias, eps):
        """LayerNorm over the last axis; weight/bias None: γ = 1, β = 0."""
        C = weight.shape[0]
        w = weight.detach().double()
        b = torch.zeros(C, dtype=torch.float64) if bias is None else bias.detach().double()
        return self.op(
            name,
            [src],
            lambda x: F.layer_norm(x, (C,), w, b, eps),
            "power",
            lambda fm, c: LayerNorm.build(
                name,
                fm[src],
                fm[name],
                channels=C,
                gamma=w.numpy(),
                beta=b.numpy(),
                eps=eps,
                x_lut_bits=c.x_lut_bits,
                rounding=c.rounding,
                tensor_id=self._next_tid(),
            ),
        )

    def linear(self, name, mod, src, last=False):
        codes, wfmt = _weight_codes(mod, name)
        wd = torch.from_numpy(wfmt.decode_real(codes, wfmt.scale_index(codes.shape)).reshape(codes.shape))
        bias = None if mod.bias is None else mod.bias.detach().double()

        def make(fm, c):
            xfmt = fm[src]
            xmax = float(np.abs(xfmt.decode_real(xfmt.range.all_codes())).max())
            return Linear.build(
                name,
                codes,
                wfmt,
                xfmt,
                datapath=c.datapath,
                w_frac_bits=_frac_bits(_table_max(wfmt), c.w_lut_bits),
                x_frac_bits=_frac_bits(xmax, c.x_lut_bits),
                product_frac_bits=_frac_bits(_product_max(wfmt, xmax), c.p_lut_bits),
                bias=None if bias is None else bias.numpy(),
                acc=c.acc,
                out_fmt=None if last else fm[name],
                rounding=c.rounding,
                tensor_id=self._next_tid(),
            )

        return self.op(name, [src], lambda x: F.linear(x, wd, bias), "last" if last else "power", make)

    def gelu(self, name, src):
        return self.elementwise(name, src, "gelu")

    def elementwise(self, name, src, function):
        """A code->code table (§15) of a built-in function (tables.FUNCTIONS)."""
        fn = FUNCTIONS[function]
        return self.op(
            name,
            [src],
            lambda x: torch.from_numpy(fn(x.numpy())),
            "power",
            lambda fm, c: ElementwiseTable.build(name, fm[src], fm[name], function, c.rounding),
        )

    def layout(self, layer, src, f):
        return self.op(layer.name, [src], f, "pass", lambda fm, c: layer)

    def reshape(self, name, src, shape):
        return self.layout(Reshape(name, shape), src, lambda x: x.reshape(shape))

    def transpose(self, name, src, d0, d1):
        return self.layout(Transpose(name, d0, d1), src, lambda x: x.transpose(d0, d1).contiguous())

    def slice(self, name, src, axis, start, stop):
        return self.layout(Slice(name, axis, start, stop), src, lambda x: x.narrow(axis, start, stop - start))

    def attention(self, prefix, q, k, v, H, C, mask=None, causal=False):
        """Scores (uniform), softmax (masks), attention·V; returns the merged (B·T, C) value."""
        T, D = self.T, C // H
        heads = []
        for nm, src in (("q", q), ("k", k), ("v", v)):
            r = self.reshape(f"{prefix}.{nm}_heads", src, (-1, T, H, D))
            heads.append(self.transpose(f"{prefix}.{nm}_bh", r, 1, 2))
        qh, kh, vh = heads
        sc = self.matmul(
            f"{prefix}.scores", qh, kh, D, transpose_b=True, alpha=1.0 / math.sqrt(D), out="uniform"
        )
        sm = self.softmax(f"{prefix}.softmax", sc, mask, causal)
        av = self.matmul(f"{prefix}.av", sm, vh, T, a_max=1.0)
        t = self.transpose(f"{prefix}.merge_t", av, 1, 2)
        return self.reshape(f"{prefix}.merge", t, (-1, C))

    def matmul(self, name, a, b, k_max, transpose_b=False, alpha=1.0, out="power", a_max=None):
        """a @ b (b given as (..., n, k) if transpose_b) × alpha folded into the requantization;
        out 'uniform' for attention scores (§13). a_max: a bound on |a| known before
        calibration (1.0 for probabilities), else the largest value of a's format."""

        def f(x, y):
            z = x @ (y.transpose(-2, -1) if transpose_b else y)
            return z * alpha if alpha != 1.0 else z

        def make(fm, c):
            return MatMul.build(
                name,
                fm[a],
                fm[b],
                k_max=k_max,
                transpose_b=transpose_b,
                alpha=alpha,
                out_fmt=fm[name],
                acc=c.acc,
                datapath="operand",
                mult_bits=min(31, 63 - c.acc.width) if out == "uniform" else 31,
                a_frac_bits=_frac_bits(_table_max(fm[a]) if a_max is None else a_max, c.x_lut_bits),
                b_frac_bits=_frac_bits(_table_max(fm[b]), c.x_lut_bits),
                rounding=c.rounding,
                tensor_id=self._next_tid(),
            )

        return self.op(name, [a, b], f, out, make)

    def softmax(self, name, sc, mask=None, causal=False, max_len=None):
        """Softmax over the last axis of uniform scores (§12): the causal rule and/or the
        key-padding mask `mask` (a PadMask value) are part of the op; max_len: the longest
        row (default T)."""
        T = self.T
        max_len = max_len or T

        def soft(s, m=None):
            keep = torch.ones(s.shape, dtype=torch.bool)
            if causal:
                keep &= torch.ones(T, T, dtype=torch.bool).tril()
            if m is not None:
                keep &= (m != 0)[:, None, None, :]
            z = s.masked_fill(~keep, float("-inf")).softmax(-1)
            return torch.nan_to_num(z, nan=0.0)  # a fully masked row: 0 (ARITHMETIC.md §12)

        return self.op(
            name,
            [sc] + ([mask] if mask else []),
            soft,
            "power_unsigned",
            lambda fm, c: Softmax.build(
                name,
                fm[sc],
                fm[name],
                max_len=max_len,
                exp_frac_bits=c.exp_frac_bits,
                prob_bits=c.prob_bits,
                acc=Accumulator(48, "saturate"),
                causal=causal,
                masked=mask is not None,
                rounding=c.rounding,
                tensor_id=self._next_tid(),
            ),
        )

    def padmask(self, name, src, pad_id):
        return self.op(
            name, [src], lambda ids: (ids != pad_id).long(), "mask", lambda fm, c: PadMask(name, pad_id)
        )


class ExportedTransformer:
    """The integer graph and the float64 fake-quant twin of one op list."""

    def __init__(self, ops, formats, graph, T):
        self.ops, self.formats, self.graph, self.T = ops, formats, graph, T

    def fake_quant(self, ids):
        return _run(self.ops, torch.as_tensor(ids), self.formats)[0]

    def integer(self, ids, backend="cpu"):
        """Real-valued output of the integer graph: the last Linear's raw accumulators × unit,
        or the last op's codes decoded by its format."""
        r = self.graph.run(np.asarray(ids, np.int64), backend=backend)
        return self.decode_output(r.output)

    def decode_output(self, out):
        last = self.graph.nodes[-1].layer
        fmt = self.formats.get(self.ops[-1].name)
        if fmt is not None:
            return fmt.decode_real(out)
        return out * last.channel_units()[None, :]


def _run(ops, ids, formats, calibrate=None):
    vals = {"input": ids}
    for op in ops:
        y = op.f(*[vals[i] for i in op.inputs])
        if calibrate is not None and op.name not in formats:
            formats[op.name] = calibrate(op, y, formats)
        fmt = formats.get(op.name)
        if op.out in ("power", "power_unsigned", "uniform") and fmt is not None:
            y = _q(fmt, y)
        vals[op.name] = y
    return vals[ops[-1].name], vals


def _calibrator(cfg):
    def calibrate(op, y, formats):
        if op.out == "fixed":
            return op.fmt
        if op.out == "pass":
            return formats[op.inputs[0]]
        if op.out in ("last", "mask"):
            return None
        a = y.detach().double().numpy()
        if op.out == "uniform":
            m = float(np.abs(a).max()) or 1.0
            return UniformFormat(cfg.score_bits, True, m / (2 ** (cfg.score_bits - 1) - 1))
        if op.out == "power_unsigned":
            return calibrate_format(a, cfg.act_bits, False, cfg.act_exponent)
        return calibrate_format(a, cfg.act_bits, True, cfg.act_exponent)

    return calibrate


def _finish(b, calib_ids, cfg):
    formats = {}
    _run(b.ops, torch.as_tensor(calib_ids), formats, _calibrator(cfg))
    nodes = [Node(op.make(formats, cfg), op.inputs) for op in b.ops]
    return ExportedTransformer(b.ops, formats, Graph(nodes), b.T)


def export_charlm(model, calib_ids, config=None):
    """CharTransformer (pre-LN, causal) for sequences of T = calib_ids.shape[1] characters.

    Every nn.Linear must carry `nupes_quant` codes (reference.api.quantize_model)."""
    cfg = config or TransformerExportConfig()
    calib_ids = torch.as_tensor(calib_ids, dtype=torch.long)
    T, C, H = calib_ids.shape[1], model.d_model, model.n_heads
    if T > model.context:
        raise ValueError(f"sequence length {T} exceeds the model's context {model.context}")
    b = _Builder(cfg, T)
    tok = b.embedding("tok_emb", model.tok_emb.weight, "input")
    pos = b.embedding("pos_emb", model.pos_emb.weight, "input", positional=True)
    x = b.reshape("emb_flat", b.add("emb", tok, pos), (-1, C))
    for i, blk in enumerate(model.blocks):
        p = f"blocks.{i}"
        h = b.layernorm(f"{p}.ln1", blk.ln1, x)
        qkv = b.linear(f"{p}.attn.qkv", blk.attn.qkv, h)
        q, k, v = (b.slice(f"{p}.attn.{n}", qkv, 1, j * C, (j + 1) * C) for j, n in enumerate("qkv"))
        y = b.attention(f"{p}.attn", q, k, v, H, C, causal=True)
        x = b.add(f"{p}.res1", x, b.linear(f"{p}.attn.proj", blk.attn.proj, y))
        h = b.layernorm(f"{p}.ln2", blk.ln2, x)
        h = b.gelu(f"{p}.gelu", b.linear(f"{p}.fc1", blk.fc1, h))
        x = b.add(f"{p}.res2", x, b.linear(f"{p}.fc2", blk.fc2, h))
    b.linear("head", model.head, b.layernorm("ln_f", model.ln_f, x), last=True)
    return _finish(b, calib_ids, cfg)


def export_minilm(model, calib_ids, config=None, pad_id=0):
    """MiniLM (post-LN BERT) for token ids padded with `pad_id` to T = calib_ids.shape[1];
    the key-padding mask is made from the ids in the graph (PadMask), token type 0 is folded
    into the position embedding (single-segment input). Output: last hidden state (B·T, H)
    of the final LayerNorm (real-valued twin; integer codes decoded by its format)."""
    cfg = config or TransformerExportConfig()
    calib_ids = torch.as_tensor(calib_ids, dtype=torch.long)
    T = calib_ids.shape[1]
    e = model.embeddings
    C = e.word_embeddings.weight.shape[1]
    b = _Builder(cfg, T)
    mask = b.padmask("pad_mask", "input", pad_id)
    tok = b.embedding("word_emb", e.word_embeddings.weight, "input")
    pos_w = e.position_embeddings.weight[:T] + e.token_type_embeddings.weight[0][None, :]
    pos = b.embedding("pos_emb", pos_w, "input", positional=True)
    x = b.layernorm("emb_ln", e.LayerNorm, b.reshape("emb_flat", b.add("emb", tok, pos), (-1, C)))
    for i, layer in enumerate(model.encoder.layer):
        p = f"layer.{i}"
        sa = layer.attention.self
        q, k, v = (b.linear(f"{p}.{n}", getattr(sa, n), x) for n in ("query", "key", "value"))
        y = b.attention(f"{p}.attn", q, k, v, layer.heads, C, mask=mask)
        x = b.layernorm(
            f"{p}.ln1",
            layer.attention.output.LayerNorm,
            b.add(f"{p}.res1", x, b.linear(f"{p}.attn_out", layer.attention.output.dense, y)),
        )
        h = b.gelu(f"{p}.gelu", b.linear(f"{p}.inter", layer.intermediate.dense, x))
        x = b.layernorm(
            f"{p}.ln2",
            layer.output.LayerNorm,
            b.add(f"{p}.res2", x, b.linear(f"{p}.out", layer.output.dense, h)),
        )
    return _finish(b, calib_ids, cfg)
