"""Sphinx configuration: the aiosessmgr documentation site.

Build it warning-free (as CI does, in ``tests/test_docs.py``,
``test_sphinx_builds_without_warnings``)::

    python -m sphinx -W -b html docs docs/_build/html

Pages are Markdown (MyST-Parser), so the narrative and the README share one syntax;
the API reference comes from the docstrings (autodoc). No extension here reaches the
network: the build runs offline.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiosessmgr  # noqa: E402

project = "aiosessmgr"
author = "the aiosessmgr authors"
copyright = "2026, the aiosessmgr authors"
release = aiosessmgr.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
root_doc = "index"

myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}
autoclass_content = "both"

html_theme = "alabaster"
html_title = f"aiosessmgr {release}"
html_static_path: list[str] = []
