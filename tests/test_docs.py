"""The docs list every public name: a new export without a line in docs/api.md fails here."""

from __future__ import annotations

import inspect
import pathlib
import re

import gradtx as gx

DOCS = pathlib.Path(__file__).parent.parent / "docs"


def test_every_public_name_is_in_the_api_docs():
    documented = set(re.findall(r"^\| `([A-Za-z_][A-Za-z0-9_]*)` \|", (DOCS / "api.md").read_text(), re.M))
    missing = sorted(set(gx.__all__) - documented)
    assert not missing, f"public names missing from docs/api.md (run python docs/make_api.py): {missing}"
    stale = sorted(documented - set(gx.__all__))
    assert not stale, f"docs/api.md lists names gradtx no longer exports: {stale}"


def test_every_public_function_has_a_docstring():
    bare = [name for name in gx.__all__
            if not inspect.isclass(getattr(gx, name)) and not (inspect.getdoc(getattr(gx, name)) or "").strip()]
    assert not bare, f"public functions without a docstring: {bare}"
