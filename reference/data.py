"""Real data sets for the reference models: Fashion-MNIST and the King James Bible.

Both come from Debian packages (no network access is needed at run time):

* ``dataset-fashion-mnist``: IDX files under ``/usr/share/datasets/fashion-mnist``
  (Zalando SE, MIT/Expat licence).
* ``bible-kjv``: the ``bible`` command prints the KJV text (public domain in most of the
  world; the Debian package's own code is GPL-2+, we only use its output).

Install both with ``make data`` (``apt-get install -y dataset-fashion-mnist bible-kjv``).
Tests call :func:`fashion_available` / :func:`kjv_available` and skip with
:data:`FASHION_MISSING` / :data:`KJV_MISSING` as the reason when they are absent.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

FASHION_DIR = Path(os.environ.get("NUPES_FASHION_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
#: Input normalization of FashionResNet: x = (pixel/255 - mean) / std, with the mean and
#: standard deviation of the 60000 training images (computed: 0.28604, 0.35302).
FASHION_MEAN = 0.2860
FASHION_STD = 0.3530

FASHION_MISSING = (
    f"Fashion-MNIST not found under {FASHION_DIR}; "
    "install it with `apt-get install -y dataset-fashion-mnist` (or `make data`)"
)
KJV_MISSING = (
    "the `bible` command (Debian package bible-kjv) is not installed; "
    "install it with `apt-get install -y bible-kjv` (or `make data`)"
)

#: The whole KJV, Genesis 1:1 to Revelation 22:21, as the `bible` command names it.
KJV_RANGE = "gen1:1-rev22:21"
KJV_VERSES = 31102


def cache_dir() -> Path:
    """``$NUPES_SIM_CACHE`` or ``$XDG_CACHE_HOME/nupes-sim`` (default ``~/.cache/nupes-sim``)."""
    if os.environ.get("NUPES_SIM_CACHE"):
        return Path(os.environ["NUPES_SIM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nupes-sim"


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------- Fashion-MNIST


def fashion_available() -> bool:
    return all((FASHION_DIR / f).is_file() for pair in FASHION_FILES.values() for f in pair)


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {FASHION_MISSING}")
    with gzip.open(path, "rb") as f:
        data = f.read()
    head = np.frombuffer(data, dtype=">u4", count=1 + ndim)
    if head[0] != magic:
        raise ValueError(f"{path}: bad IDX magic {int(head[0]):#x}, expected {magic:#x}")
    shape = tuple(int(d) for d in head[1:])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 * (1 + ndim))
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {arr.size} bytes of data for shape {shape}")
    return arr.reshape(shape).copy()


def load_fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 28, 28) and labels int64 (N,) of split 'train' (60000) or 'test' (10000)."""
    if split not in FASHION_FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    img_name, lab_name = FASHION_FILES[split]
    images = _read_idx(FASHION_DIR / img_name, 0x00000803, 3)
    labels = _read_idx(FASHION_DIR / lab_name, 0x00000801, 1).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels")
    return images, labels


def normalize_fashion(images: np.ndarray):
    """uint8 images (N, 28, 28) -> float32 torch tensor (N, 1, 28, 28), normalized with
    :data:`FASHION_MEAN` / :data:`FASHION_STD`."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(255.0)
    return x.sub_(FASHION_MEAN).div_(FASHION_STD).unsqueeze(1)


def fashion_tensors(split: str):
    """(images float32 (N, 1, 28, 28) normalized as FashionResNet expects, labels int64 (N,))."""
    import torch

    images, labels = load_fashion_mnist(split)
    return normalize_fashion(images), torch.from_numpy(labels)


# ----------------------------------------------------------------------------- KJV


def kjv_available() -> bool:
    return shutil.which("bible") is not None or (cache_dir() / "kjv.txt").is_file()


def parse_bible_output(raw: str) -> list[str]:
    """Verse texts from the `bible` command's output.

    Format: a blank line and a header line (``Genesis 1``, ``1 Samuel 3``: no indentation)
    per chapter, then verses as ``  <n> <text>`` (indented) whose text may wrap onto
    unindented continuation lines. References are dropped; wrapped lines are joined by a space.
    """
    verses: list[str] = []
    current: list[str] | None = None
    prev_blank = True
    for line in raw.splitlines():
        if not line.strip():
            prev_blank = True
            continue
        if line.startswith(" "):
            num, _, text = line.strip().partition(" ")
            if not num.isdigit():
                raise ValueError(f"unexpected verse line in bible output: {line!r}")
            if current is not None:
                verses.append(" ".join(current))
            current = [text.strip()]
        elif prev_blank:  # chapter header
            if current is not None:
                verses.append(" ".join(current))
            current = None
        else:
            if current is None:
                raise ValueError(f"continuation line without a verse in bible output: {line!r}")
            current.append(line.strip())
        prev_blank = False
    if current is not None:
        verses.append(" ".join(current))
    return verses


def load_kjv_verses(refresh: bool = False) -> list[str]:
    """The 31102 KJV verse texts in canonical order (no references), one per list item.

    Cached, one verse per line, in ``cache_dir()/kjv.txt`` (written atomically)."""
    path = cache_dir() / "kjv.txt"
    if path.is_file() and not refresh:
        verses = path.read_text(encoding="utf-8").split("\n")
        if verses and verses[-1] == "":
            verses.pop()
        if len(verses) == KJV_VERSES:
            return verses
    exe = shutil.which("bible")
    if exe is None:
        raise FileNotFoundError(KJV_MISSING)
    raw = subprocess.run(
        [exe, KJV_RANGE], check=True, capture_output=True, text=True, env={**os.environ, "PAGER": "cat"}
    ).stdout
    verses = parse_bible_output(raw)
    if len(verses) != KJV_VERSES:
        raise ValueError(f"`bible {KJV_RANGE}` gave {len(verses)} verses, expected {KJV_VERSES}")
    _atomic_write_text(path, "\n".join(verses) + "\n")
    return verses


def kjv_text() -> str:
    """The whole KJV as one string for the character LM: verses joined by newlines."""
    return "\n".join(load_kjv_verses()) + "\n"


def data_available() -> dict[str, bool]:
    """{'fashion': ..., 'kjv': ...}: which Debian data sets can be loaded here."""
    return {"fashion": fashion_available(), "kjv": kjv_available()}


#: Fraction of the KJV characters held out (at the end: from Colossians 1:12 on, 206888 characters) for perplexity.
KJV_HOLDOUT = 0.05


def kjv_split(holdout: float = KJV_HOLDOUT) -> tuple[str, str]:
    """(train text, held-out text) of :func:`kjv_text`: the held-out part is the last
    ``holdout`` fraction of the characters, moved forward to the start of the next verse."""
    text = kjv_text()
    cut = int(len(text) * (1.0 - holdout))
    cut = text.index("\n", cut) + 1
    return text[:cut], text[cut:]
