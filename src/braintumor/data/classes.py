"""Class names: which folder names mean "no tumour", and which class is the tumour score of a binary problem.

    >>> from braintumor.data.classes import positive_class
    >>> positive_class(["no", "yes"]), positive_class(["notumor", "glioma", "pituitary"])
    ('yes', None)
"""

from __future__ import annotations

#: Folder names (lower case) that mean "no tumour".
NEGATIVE_NAMES = ("no", "notumor", "no_tumor", "no-tumor", "notumour", "no_tumour", "no-tumour", "non_tumour",
                  "normal", "negative", "healthy", "0", "false")


def positive_class(classes: list[str]) -> str | None:
    """The class whose probability is the 'tumour score' for binary problems, else ``None``."""
    if len(classes) != 2:
        return None
    neg = [c for c in classes if c.lower() in NEGATIVE_NAMES]
    if len(neg) == 1:
        return classes[1 - classes.index(neg[0])]
    return classes[1]
