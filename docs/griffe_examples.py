"""Griffe extension for the API reference: read the project's reST-flavoured Google docstrings as Markdown.

* ``Example:`` headings become Google-style ``Examples:`` (griffe only knows the plural), so ``>>>`` lines render
  as code instead of Markdown quotes.
* Sphinx roles (``:func:`train```, ``:class:`~braintumor.inference.Predictor```) become inline code (the
  ``~`` form shows the last component, as in Sphinx).
"""

from __future__ import annotations

import re

import griffe

_HEADER = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)
_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):`(~?)([^`]+)`")


def _role(m: re.Match) -> str:
    target = m.group(2).strip()
    if m.group(1):
        target = target.rsplit(".", 1)[-1]
    return f"``{target}``"


class ExampleSections(griffe.Extension):
    """Rewrite each docstring before it is parsed (see the module docstring)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        doc = obj.docstring
        if doc is None:
            return
        value = _HEADER.sub(r"\1Examples:", doc.value) if "Example:" in doc.value else doc.value
        doc.value = _ROLE.sub(_role, value) if ":`" in value else value
