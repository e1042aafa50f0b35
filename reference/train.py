"""Deterministic training of the reference models on CPU.

    python -m nupes_sim.reference.train fashion [--epochs 10] [--out data/fashion_resnet.pt]
    python -m nupes_sim.reference.train charlm  [--steps 1500] [--out data/charlm_kjv.pt]

Fixed seeds, ``torch.use_deterministic_algorithms(True)``, a fixed thread count (--threads,
default 2) and no DataLoader workers: the same command on the same machine / torch build
gives the same weights. (Float reductions may differ with another thread count or CPU.)
Checkpoints are written atomically (temp file + os.replace); see evaluate.py for the format.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import data
from .evaluate import char_perplexity, fashion_top1
from .models import CharTransformer, FashionResNet


def setup(seed: int, threads: int) -> torch.Generator:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    return torch.Generator().manual_seed(seed)


def save_atomic(obj, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def augment(x: torch.Tensor, gen: torch.Generator, shift: int = 2) -> torch.Tensor:
    """Random horizontal flip and random translation by up to ``shift`` pixels (zero-padded
    in the normalized domain, i.e. with the value of a black pixel)."""
    n = x.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    bg = (0.0 - data.FASHION_MEAN) / data.FASHION_STD
    padded = F.pad(x, (shift,) * 4, value=bg)
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    h, w = x.shape[2:]
    rows = (dy[:, None] + torch.arange(h))[:, :, None].expand(n, h, w)
    cols = (dx[:, None] + torch.arange(w))[:, None, :].expand(n, h, w)
    flat = rows * padded.shape[3] + cols
    return padded.flatten(2).gather(2, flat.reshape(n, 1, -1)).reshape_as(x)


def train_fashion(args) -> dict:
    gen = setup(args.seed, args.threads)
    x_train, y_train = data.fashion_tensors("train")
    x_test, y_test = data.fashion_tensors("test")
    model = FashionResNet(width=args.width)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    total = steps_per_epoch * args.epochs
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total, pct_start=0.2)
    t0 = time.time()
    bar = tqdm(total=total, desc="fashion", mininterval=5)
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        for i in range(0, len(x_train), args.batch_size):
            idx = perm[i : i + args.batch_size]
            xb = augment(x_train[idx], gen)
            loss = F.cross_entropy(model(xb), y_train[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", refresh=False)
        acc = fashion_top1(model, x_test, y_test)
        tqdm.write(f"epoch {epoch + 1}/{args.epochs}: test top-1 {acc:.4f} ({time.time() - t0:.0f} s)")
    bar.close()
    model.eval()
    metrics = dict(
        test_top1=fashion_top1(model, x_test, y_test),
        test_top1_first1000=fashion_top1(model, x_test[:1000], y_test[:1000]),
        train_seconds=round(time.time() - t0, 1),
        params=sum(p.numel() for p in model.parameters()),
    )
    return dict(kind="fashion", config=dict(width=args.width), state_dict=model.state_dict(), metrics=metrics)


def train_charlm(args) -> dict:
    gen = setup(args.seed, args.threads)
    train_text, held_text = data.kjv_split()
    vocab = "".join(sorted(set(train_text) | set(held_text)))
    model = CharTransformer(
        vocab, d_model=args.d_model, n_heads=args.heads, n_layers=args.layers, context=args.context
    )
    ids = model.encode(train_text)
    held = model.encode(held_text)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "emb" not in n]
    other = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "emb" not in n)]
    opt = torch.optim.AdamW(
        [dict(params=decay, weight_decay=0.1), dict(params=other, weight_decay=0.0)],
        lr=args.lr,
        betas=(0.9, 0.99),
    )
    warm = max(1, args.steps // 20)

    def lr_at(s):
        if s < warm:
            return (s + 1) / warm
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, args.steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    t0 = time.time()
    model.train()
    bar = tqdm(range(args.steps), desc="charlm", mininterval=5)
    ar = torch.arange(args.context + 1)
    for step in bar:
        starts = torch.randint(0, ids.numel() - args.context - 1, (args.batch_size,), generator=gen)
        chunk = ids[starts[:, None] + ar]
        logits = model(chunk[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    train_seconds = round(time.time() - t0, 1)
    metrics = dict(
        heldout_ppl=char_perplexity(model, held, args.context),
        heldout_chars=held.numel(),
        train_chars=ids.numel(),
        train_seconds=train_seconds,
        params=sum(p.numel() for p in model.parameters()),
    )
    g = torch.Generator().manual_seed(0)
    tqdm.write("sample: " + model.generate("And it came to pass", 200, generator=g, temperature=0.8))
    return dict(kind="charlm", config=model.config(), state_dict=model.state_dict(), metrics=metrics)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m nupes_sim.reference.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("which", choices=["fashion", "charlm"])
    p.add_argument("--out", help="checkpoint path (default data/fashion_resnet.pt or data/charlm_kjv.pt)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, help="peak learning rate (default 0.1 fashion, 3e-3 charlm)")
    p.add_argument("--batch-size", type=int, help="default 128 fashion, 32 charlm")
    # fashion
    p.add_argument("--epochs", type=int, default=10, help="fashion: epochs over the 60000 training images")
    p.add_argument("--width", type=int, default=16, help="fashion: stem width")
    # charlm
    p.add_argument("--steps", type=int, default=1500, help="charlm: optimizer steps")
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=3)
    args = p.parse_args(argv)
    if args.which == "fashion":
        args.lr = args.lr or 0.1
        args.batch_size = args.batch_size or 128
        out = args.out or "data/fashion_resnet.pt"
        ckpt = train_fashion(args)
    else:
        args.lr = args.lr or 3e-3
        args.batch_size = args.batch_size or 32
        out = args.out or "data/charlm_kjv.pt"
        ckpt = train_charlm(args)
    ckpt["command"] = "python -m nupes_sim.reference.train " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    ckpt["torch_version"] = str(torch.__version__)  # plain str: loadable with weights_only=True
    ckpt["state_dict"] = {k: v.detach().float().contiguous().clone() for k, v in ckpt["state_dict"].items()}
    save_atomic(ckpt, out)
    print(f"wrote {out} ({os.path.getsize(out) / 1e6:.2f} MB): {ckpt['metrics']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
