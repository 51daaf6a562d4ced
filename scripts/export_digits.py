"""Writes scikit-learn's bundled UCI handwritten digits (1797 8x8 images, BSD-3-Clause via
scikit-learn; originally the UCI ML repository) as CSV rows of 64 pixel values (0-16) and a label."""
import pathlib
import sys

from sklearn.datasets import load_digits

out = pathlib.Path(sys.argv[1])
out.parent.mkdir(parents=True, exist_ok=True)
digits = load_digits()
tmp = out.with_suffix(".tmp")
with tmp.open("w") as f:
    for image, label in zip(digits.data, digits.target):
        f.write(",".join(str(int(v)) for v in image) + f",{int(label)}\n")
tmp.replace(out)
