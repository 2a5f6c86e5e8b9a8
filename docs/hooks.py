"""MkDocs hooks: before the build, write the API pages from the docstrings (docs/make_api.py) and draw
the gallery's figures (examples/gallery.py), so the site never shows a stale page or figure. A guide
added under docs/guides/ without a nav entry is listed under "Guides" by its first heading."""

from __future__ import annotations

import pathlib
import runpy
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# figures other scripts draw (benchmarks/): shown in the gallery when present
BENCHMARK_FIGURES = {"figures/step_time_vs_tensors.png": "Step time against the number of parameter tensors"}


def _load(path: pathlib.Path) -> dict:
    sys.path.insert(0, str(ROOT / "src"))  # the checkout's gradtx, installed or not
    try:
        return runpy.run_path(str(path), run_name=path.stem)
    finally:
        sys.path.remove(str(ROOT / "src"))


def _files(nav) -> set[str]:
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, dict):
        return set().union(*(_files(v) for v in nav.values()))
    if isinstance(nav, list):
        return set().union(set(), *(_files(v) for v in nav))
    return set()


def _add_unlisted_guides(nav: list) -> None:
    listed = _files(nav)
    for entry in nav:
        if isinstance(entry, dict) and isinstance(entry.get("Guides"), list):
            for path in sorted((DOCS / "guides").glob("*.md")):
                rel = f"guides/{path.name}"
                if rel not in listed:
                    title = next((line[2:].strip() for line in path.read_text().splitlines()
                                  if line.startswith("# ")), path.stem)
                    entry["Guides"].append({title: rel})


def on_config(config, **kwargs):
    api = _load(DOCS / "make_api.py")
    api["write"]()
    for entry in config["nav"] or []:
        if isinstance(entry, dict) and "Reference" in entry:
            entry["Reference"] = [{"API index": "api.md"}, *api["nav"]()]
    _add_unlisted_guides(config["nav"] or [])
    _load(ROOT / "examples" / "gallery.py")["main"](DOCS / "gallery")
    return config


def on_page_markdown(markdown, page, **kwargs):
    if page.file.src_uri == "gallery.md":
        for rel, caption in BENCHMARK_FIGURES.items():
            if (DOCS / rel).exists():
                markdown += f"\n## {caption}\n\nFrom the [benchmarks](benchmarks.md).\n\n![{caption}]({rel})\n"
    return markdown
