"""Write the API pages: docs/api.md (every public name with its docstring's first line, linked to
its entry) and docs/reference/*.md (one page per family, each name rendered from its docstring
by mkdocstrings under its public name ``gradtx.NAME``).

Pages and sections follow ``gradtx._MODULES``: a new name in a listed module appears on its own.
``mkdocs build`` runs this first (docs/hooks.py), so the reference pages are never stale; run
``python docs/make_api.py`` after adding a public name to refresh the committed docs/api.md.
``tests/test_docs.py`` fails while a public name has no entry.
"""

from __future__ import annotations

import importlib
import inspect
import pathlib
import re

import gradtx as gx

DOCS = pathlib.Path(__file__).parent

# (page, title, module prefixes under gradtx.): every module of gx._MODULES must match one
PAGES = [
    ("core", "Core: the contract, trees, authoring, evaluation",
     ["base", "_tree", "authoring", "evaluation", "handover"]),
    ("combinators", "Combinators and branching", ["combine", "branching"]),
    ("transforms", "Transforms", ["transforms."]),
    ("preconditioners", "Matrix preconditioners", ["precondition"]),
    ("search", "Line searches, quasi-Newton, conjugate gradient, trust regions", ["search."]),
    ("second_order", "Second order: Hessian-vector products, Newton, diagonal curvature", ["second_order."]),
    ("approx", "Gradient approximation: finite differences, SPSA, MeZO, forward gradients", ["approx."]),
    ("wrappers", "Wrappers and monitoring", ["wrappers", "sharpness", "projected", "external", "monitoring"]),
    ("schedules", "Schedules", ["schedules"]),
    ("optimizers", "Optimizers (aliases)", ["aliases"]),
    ("adapter", "The torch.optim adapter", ["optim"]),
]


# a package's submodule listed before its others (the rest follow alphabetically)
FIRST = {"gradtx.aliases": "gradtx.aliases.sgd_adam"}


def _page_of(module: str) -> str:
    for page, _, prefixes in PAGES:
        if any(module == p or module.startswith(p if p.endswith(".") else p + ".") for p in prefixes):
            return page
    raise LookupError(f"gradtx.{module} is in gx._MODULES but on no page of docs/make_api.py's PAGES")


def _plain(text: str) -> str:
    """A docstring line as Markdown: reST's ``code`` and :func:`name` become `code`."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _first_paragraph(obj) -> str:
    """A docstring's first paragraph on one line, or a state's fields."""
    doc = inspect.getdoc(obj) or ""
    if inspect.isclass(obj) and obj.__doc__ and obj.__doc__.startswith(obj.__name__ + "("):
        doc = ""  # a NamedTuple's generated docstring says nothing
    first = doc.strip().split("\n\n")[0].replace("\n", " ")
    if not first and inspect.isclass(obj) and obj.__name__.endswith("State"):
        first = "State of " + ", ".join(f"`{f}`" for f in getattr(obj, "_fields", ())) + "."
    return _plain(first) or "(undocumented)"


_summary = _first_paragraph  # the name older callers used


def _family(module) -> list[tuple[object, list[str]]]:
    """``(module, names)`` per family of a module: a package that gathers submodules (the aliases)
    is split by submodule."""
    names = list(module.__all__)
    groups = []
    if hasattr(module, "__path__"):
        first = FIRST.get(module.__name__)
        for sub in sorted(vars(module).values(), key=lambda m: (getattr(m, "__name__", "") != first,
                                                                  getattr(m, "__name__", ""))):
            if inspect.ismodule(sub) and sub.__name__.startswith(module.__name__ + ".") and hasattr(sub, "__all__"):
                own = [n for n in sub.__all__ if n in names and getattr(module, n) is getattr(sub, n)]
                if own:
                    groups.append((sub, own))
                    names = [n for n in names if n not in own]
    if names:
        groups.insert(0, (module, names))
    return groups


def _outer_colon(text: str) -> int:
    """Index of the first ": " outside backticks, parentheses and quotes, or -1."""
    depth, code, quoted = 0, False, False
    for i, ch in enumerate(text):
        if ch == "`":
            code = not code
        elif ch == '"' and not code:
            quoted = not quoted
        elif not (code or quoted):
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if depth == 0 and text.startswith(": ", i):
                return i
    return -1


def _title(module) -> str:
    """A module's family name: its docstring's first sentence up to the colon (or parenthesis),
    without a citation such as "(Defazio et al., 2024)"."""
    first = _plain((inspect.getdoc(module) or module.__name__).strip().split("\n\n")[0].replace("\n", " "))
    colon = _outer_colon(first)
    head = first[:colon] if colon >= 0 else first.split(" (")[0]
    head = re.sub(r" \((?:[^()]|\([^()]*\))*\b(?:1[89]|20)\d\d\b(?:[^()]|\([^()]*\))*\)$", "", head)
    return head.rstrip(".")


def _order(names: list[str]) -> list[str]:
    # functions first, then classes (the states), each alphabetically
    return sorted(names, key=lambda n: (inspect.isclass(getattr(gx, n)), n.lower()))


def _layout() -> dict[str, list[tuple[object, list[str]]]]:
    """page -> [(module, public names)], every name of ``gx.__all__`` exactly once."""
    pages: dict[str, list[tuple[object, list[str]]]] = {page: [] for page, _, _ in PAGES}
    seen: set[str] = set()
    for module in gx._MODULES:
        page = _page_of(module.__name__.removeprefix("gradtx."))
        for family, names in _family(module):
            names = [n for n in names if n not in seen]
            seen.update(names)
            if names:
                pages[page].append((family, _order(names)))
    return pages


def reference_pages() -> dict[str, str]:
    """``{"reference/<page>.md": markdown}``: each public name as a mkdocstrings entry."""
    out = {}
    for page, title, _ in PAGES:
        lines = [f"# {title}", "", "Every entry is rendered from its docstring; import gradtx as `gx`.", ""]
        for family, names in _layout()[page]:
            lines += [f"## {_title(family)}", "", _first_paragraph(family), ""]
            for name in names:
                lines += [f"::: gradtx.{name}", ""]
        if page == "core":
            lines += ["## Multi-tensor kernels: `gx.foreach`", "",
                      _first_paragraph(gx.foreach) + " See [writing a transform](../guides/writing_transforms.md).", ""]
            for name in sorted(gx.foreach.__all__, key=str.lower):
                lines += [f"::: gradtx.foreach.{name}", ""]
        out[f"reference/{page}.md"] = "\n".join(lines)
    return out


def render() -> str:
    """docs/api.md: one table per family, each name linked to its reference entry."""
    lines = ["# API index", "",
             "Every public name of `gradtx` (imported as `gx`) with the first line of its docstring; each name links",
             "to its entry in the reference, which gives the update rule, the defaults, a reference and an example.",
             "Generated by `python docs/make_api.py`.", ""]
    layout = _layout()
    for page, title, _ in PAGES:
        lines += [f"## [{title}](reference/{page}.md)", ""]
        for family, names in layout[page]:
            lines += [f"**{_title(family)}**", "", "| name | what it is |", "|---|---|"]
            for name in names:
                summary = _first_paragraph(getattr(gx, name)).replace("|", "\\|")
                lines.append(f"| [`{name}`][gradtx.{name}] | {summary} |")
            lines.append("")
    lines += ["## Multi-tensor kernels: `gx.foreach`", "",
              _first_paragraph(gx.foreach).replace("|", "\\|"), "", "| name | what it is |", "|---|---|"]
    for name in sorted(gx.foreach.__all__, key=str.lower):
        summary = _first_paragraph(getattr(gx.foreach, name)).replace("|", "\\|")
        lines.append(f"| [`foreach.{name}`][gradtx.foreach.{name}] | {summary} |")
    lines.append("")
    return "\n".join(lines)


def write(docs: pathlib.Path = DOCS) -> list[pathlib.Path]:
    """Write api.md and the reference pages (a file is rewritten only when its text changed)."""
    written = []
    for rel, text in {"api.md": render(), **reference_pages()}.items():
        path = docs / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            written.append(path)
    return written


def nav() -> list[dict[str, str]]:
    """The reference pages as mkdocs nav entries, in PAGES order."""
    return [{title: f"reference/{page}.md"} for page, title, _ in PAGES]


if __name__ == "__main__":
    importlib.invalidate_caches()
    write()
    print(f"wrote {DOCS / 'api.md'} and {len(PAGES)} reference pages ({len(gx.__all__)} names)")
