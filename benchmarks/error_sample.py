"""A seeded random sample of one kind of outcome of an evaluation, as a numbered montage to read by eye.

    python benchmarks/error_sample.py PREDICTIONS.csv --kind fp --n 48 --seed 1 --out fp.png

``PREDICTIONS.csv`` is an evaluation's (``braintumor evaluate ... --out DIR``: ``DIR/predictions.csv``; a
``cv --by-source`` fold: ``folds/<fold>/test/predictions.csv``). ``--kind`` picks the rows: ``fp`` (labelled
``--negative``, predicted otherwise), ``fn``, ``tn``, ``tp`` or ``all``; ``--n`` of them are drawn without
replacement with ``--seed`` (``--skip`` drops the first draws, for a second page of the same shuffle). The montage
shows each image's greyscale thumbnail with its index; a CSV beside it (``--out`` with ``.csv``) maps each index to
the image's path, label and ``p_<positive>``. Prints one JSON object (how many rows of each kind, what was drawn).
Used for the by-eye counts in benchmarks/README.md (which planes Nickparvar's false positives are in).
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import emit  # noqa: E402


def outcome(label: str, predicted: str, negative: str) -> str:
    """``tp``/``fp``/``tn``/``fn`` of one prediction, the positive class being anything but ``negative``."""
    truth, said = label != negative, predicted != negative
    return ("t" if truth == said else "f") + ("p" if said else "n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("predictions", type=Path)
    ap.add_argument("--kind", choices=["fp", "fn", "tn", "tp", "all"], default="fp")
    ap.add_argument("--negative", default="no_tumour", help="the label that is the negative class")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--skip", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--side", type=int, default=128, help="thumbnail side in pixels")
    ap.add_argument("--cols", type=int, default=8)
    ap.add_argument("--out", type=Path, required=True, help="montage PNG; the index CSV is written beside it")
    a = ap.parse_args()

    from PIL import Image, ImageDraw

    from braintumor.rundir import read_predictions

    paths, labels, said, proba, classes = read_predictions(a.predictions)  # exact file names, as the report reads
    kind_of = [outcome(t, p, a.negative) for t, p in zip(labels, said, strict=True)]
    kinds = {k: [i for i, o in enumerate(kind_of) if o == k] for k in ("tp", "fp", "tn", "fn")}
    pool = list(range(len(paths))) if a.kind == "all" else kinds[a.kind]
    random.Random(a.seed).shuffle(pool)
    drawn = pool[a.skip:a.skip + a.n]
    base = a.predictions.parent
    positive = next((c for c in classes if c != a.negative), None)

    side, cols = a.side, a.cols
    grid = Image.new("L", (side * cols, side * max(1, -(-len(drawn) // cols))))
    pen = ImageDraw.Draw(grid)
    for i, r in enumerate(drawn):
        path = Path(paths[r])
        if not path.exists() and (base / path).exists():
            path = base / path
        x, y = (i % cols) * side, (i // cols) * side
        try:
            with Image.open(path) as im:
                grid.paste(im.convert("L").resize((side, side)), (x, y))
        except OSError:
            pen.text((x + 4, y + side // 2), "unreadable", fill=128)
        pen.text((x + 3, y + 2), str(i), fill=255)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(a.out)
    with open(a.out.with_suffix(".csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "path", "label", "predicted", f"p_{positive}" if positive else "p"])
        for i, r in enumerate(drawn):
            p = str(float(proba[r, classes.index(positive)])) if positive else ""
            w.writerow([i, paths[r], labels[r], said[r], p])
    emit({"predictions": str(a.predictions), "counts": {k: len(v) for k, v in kinds.items()}, "kind": a.kind,
          "seed": a.seed, "skip": a.skip, "drawn": len(drawn), "montage": str(a.out),
          "index": str(a.out.with_suffix(".csv"))})


if __name__ == "__main__":
    main()
