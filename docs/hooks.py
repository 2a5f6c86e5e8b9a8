"""MkDocs hooks: before the build, write the API pages from the docstrings (docs/make_api.py) and draw
the gallery's figures (examples/gallery.py), so the site never shows a stale page or figure."""

from __future__ import annotations

import pathlib
import runpy
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _load(path: pathlib.Path) -> dict:
    sys.path.insert(0, str(ROOT / "src"))  # the checkout's gradtx, installed or not
    try:
        return runpy.run_path(str(path), run_name=path.stem)
    finally:
        sys.path.remove(str(ROOT / "src"))


def on_config(config, **kwargs):
    api = _load(ROOT / "docs" / "make_api.py")
    api["write"]()
    for entry in config["nav"] or []:
        if isinstance(entry, dict) and "Reference" in entry:
            entry["Reference"] = [{"API index": "api.md"}, *api["nav"]()]
    _load(ROOT / "examples" / "gallery.py")["main"](ROOT / "docs" / "gallery")
    return config
