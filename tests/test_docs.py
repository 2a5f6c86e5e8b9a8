"""The docs cover every public name: a new export without a reference entry (docs/make_api.py renders
one per name of ``gx.__all__``, grouped by ``gx._MODULES``) or without a line in docs/api.md fails here."""

from __future__ import annotations

import importlib.util
import inspect
import pathlib
import re

from registry import ENTRIES

import gradtx as gx

DOCS = pathlib.Path(__file__).parent.parent / "docs"


def _make_api():
    spec = importlib.util.spec_from_file_location("make_api", DOCS / "make_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _entries() -> list[str]:
    pages = _make_api().reference_pages()
    return [name for text in pages.values() for name in re.findall(r"^::: gradtx\.([\w.]+)$", text, re.M)]


def test_every_public_name_has_one_reference_entry():
    entries = _entries()
    top = [n for n in entries if not n.startswith("foreach.")]
    missing = sorted(set(gx.__all__) - set(top))
    assert not missing, f"public names without a reference entry (add the module to make_api.PAGES): {missing}"
    assert sorted(top) == sorted(set(top)), "a name has two reference entries"
    assert sorted(set(top) - set(gx.__all__)) == []
    kernels = {n.removeprefix("foreach.") for n in entries if n.startswith("foreach.")}
    assert kernels == set(gx.foreach.__all__)


def test_every_registered_constructor_has_a_reference_entry():
    documented = set(_entries())
    missing = sorted({entry.name for entry in ENTRIES} - documented)
    assert not missing, f"registry entries without a reference entry: {missing}"


def test_reference_sections_are_titled_by_family_not_module():
    pages = _make_api().reference_pages()
    headings = [h for text in pages.values() for h in re.findall(r"^## (.*)$", text, re.M)]
    assert len(headings) >= 40
    modules = {m.__name__ for m in gx._MODULES}
    assert not [h for h in headings if any(re.search(rf"\b{re.escape(m)}\b", h) for m in modules)], headings


def test_a_module_on_no_page_fails_loudly():
    make_api = _make_api()
    assert make_api._page_of("transforms.adaptive") == "transforms"
    try:
        make_api._page_of("newfolder.thing")
    except LookupError as error:
        assert "PAGES" in str(error)
    else:
        raise AssertionError("an unplaced module was accepted")


def test_every_public_name_is_in_the_api_index():
    text = (DOCS / "api.md").read_text()
    documented = set(re.findall(r"^\| \[`([A-Za-z_][A-Za-z0-9_]*)`\]\[gradtx\.\1\] \|", text, re.M))
    missing = sorted(set(gx.__all__) - documented)
    assert not missing, f"public names missing from docs/api.md (run python docs/make_api.py): {missing}"
    stale = sorted(documented - set(gx.__all__))
    assert not stale, f"docs/api.md lists names gradtx no longer exports: {stale}"


def test_every_public_function_has_a_docstring():
    bare = [name for name in gx.__all__
            if not inspect.isclass(getattr(gx, name)) and not (inspect.getdoc(getattr(gx, name)) or "").strip()]
    assert not bare, f"public functions without a docstring: {bare}"


def test_every_public_attribute_is_exported_and_so_documented():
    """A name reachable as ``gx.NAME`` (not a submodule) is in ``gx.__all__``, which the reference
    pages are built from: a function imported into gradtx/__init__.py from a module missing from
    ``gx._MODULES`` would otherwise be public with no reference entry."""
    hidden = sorted(name for name, value in vars(gx).items()
                    if not name.startswith("_") and not inspect.ismodule(value) and name not in gx.__all__)
    assert not hidden, f"public attributes of gradtx missing from gx.__all__ (add their module to _MODULES): {hidden}"


def test_family_headings_are_whole():
    """A family heading is a name, not a sentence cut inside a parenthesis or a quoted title."""
    make_api = _make_api()
    pages = make_api.reference_pages()
    headings = [h for text in pages.values() for h in re.findall(r"^## (.*)$", text, re.M)]
    for heading in headings:
        assert heading.count("(") == heading.count(")"), heading
        assert heading.count('"') % 2 == 0, heading
    assert make_api._outer_colon('Sophia (Liu et al., 2023, "Sophia: A Scalable Optimizer"): momentum') == 57
