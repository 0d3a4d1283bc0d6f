"""The documentation: `mkdocs build --strict` passes (warnings are errors), and it covers the public API."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO

DOCS = REPO / "docs"
#: Modules that are deliberately not in the API reference (the CLI has its own --help; model internals are
#: reached through the registry).
UNDOCUMENTED = {"braintumor.__main__", "braintumor.cli", "braintumor.models", "braintumor.models.cnn",
                "braintumor.models.efficientnet_lite", "braintumor.models.monai_nets", "braintumor.data"}


def quickstart_block() -> list[str]:
    """The code lines of the quick start in docs/index.md (between the quickstart markers)."""
    text = (DOCS / "index.md").read_text()
    block = text.split("<!-- quickstart:start -->")[1].split("<!-- quickstart:end -->")[0]
    code = block.split("```python")[1].split("```")[0]
    return [line for line in code.splitlines() if line.strip()]


def documented_modules() -> set[str]:
    return {m for page in DOCS.rglob("*.md") for m in re.findall(r"^::: ([\w.]+)", page.read_text(), re.M)}


def package_modules() -> set[str]:
    src = REPO / "src"
    mods = set()
    for f in (src / "braintumor").rglob("*.py"):
        parts = list(f.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods.add(".".join(parts))
    return mods - {"braintumor"}


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocstrings_handlers.python")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "WARNING" not in log, log[-4000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "braintumor.training.train" in api  # the public API table links into the reference
    ref = (tmp_path / "site" / "api" / "training" / "index.html").read_text()
    assert 'id="braintumor.training.train"' in ref and "Examples:" in ref


def test_every_module_is_in_the_api_reference():
    missing = sorted(package_modules() - documented_modules() - UNDOCUMENTED)
    assert not missing, f"add these modules to a page in docs/api/ (a '::: module' line): {missing}"
    unknown = sorted(m for m in documented_modules() if m not in package_modules() | {"braintumor"})
    assert not unknown, f"docs reference modules that do not exist: {unknown}"


def test_api_page_lists_every_public_name():
    import braintumor

    page = (DOCS / "api" / "index.md").read_text()
    missing = [n for n in braintumor.__all__ if n != "__version__" and f"`bt.{n}`" not in page]
    assert not missing, f"docs/api/index.md does not list {missing}"


def test_quickstart_is_under_ten_lines():
    lines = quickstart_block()
    assert lines[0] == "import braintumor as bt"
    assert len(lines) < 10, lines
    assert any("bt.train(" in line for line in lines) and any("bt.explain(" in line for line in lines)


def test_guide_pages_are_in_the_nav():
    nav = (REPO / "mkdocs.yml").read_text()
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert pages and all(p in nav for p in pages), [p for p in pages if p not in nav]


def test_readme_names_the_docs_command():
    assert "make docs" in (REPO / "README.md").read_text()
    assert re.search(r"^docs:.*\n\t\$\(VENV\)/bin/mkdocs build --strict", (REPO / "Makefile").read_text(), re.M)


def test_package_docstring_shows_the_same_quick_start():
    import braintumor

    doc = [line.strip() for line in braintumor.__doc__.splitlines()]
    assert all(line.strip() in doc for line in quickstart_block())
