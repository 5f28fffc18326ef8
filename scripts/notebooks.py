"""Execute the notebooks on the committed tables and save them with their outputs: python scripts/notebooks.py

The notebooks are committed executed (tables and figures inline), with the settings they read from
the environment at their defaults. tests/test_notebooks.py executes them again the same way and
fails when a committed output is stale; rerun this script (`make notebooks`) after the tables change.
"""
from __future__ import annotations

import os
import sys

import nbformat
from nbclient import NotebookClient

from spa import repo_root

NOTEBOOKS = repo_root() / "notebooks"
NAMES = ("01-results.ipynb", "02-parameter-budget.ipynb")
# the environment settings the notebooks read; the committed outputs are made with none of them set
SETTINGS = ("SPA_EXP", "SPA_RESULTS_DIR", "SPA_REBUILD", "SPA_BACKBONE", "SPA_CLASSES", "SPA_CIFAR_STEM", "SPA_STEP",
            "SPA_TARGET")


def execute(name: str, env: dict[str, str] | None = None) -> nbformat.NotebookNode:
    """Run notebook ``name`` top to bottom in a fresh kernel with the settings ``env`` (others unset)."""
    saved = {k: os.environ.pop(k) for k in SETTINGS if k in os.environ}
    os.environ.update(env or {})
    try:
        book = nbformat.read(NOTEBOOKS / name, as_version=4)
        NotebookClient(book, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    finally:
        for key in env or {}:
            os.environ.pop(key, None)
        os.environ.update(saved)
    return book


def text_outputs(book: nbformat.NotebookNode) -> list[list[str]]:
    """Per code cell, what it printed or displayed as text (stderr and images left out): what a
    stale committed notebook would show differently."""
    cells = []
    for cell in book.cells:
        if cell.cell_type != "code":
            continue
        texts = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stdout":
                texts.append(out.get("text", ""))
            data = out.get("data", {})
            for kind in ("text/markdown", "text/html"):
                if kind in data:
                    texts.append(data[kind])
            if "text/plain" in data and not any(k.startswith("image/") for k in data):
                texts.append(data["text/plain"])
        cells.append(texts)
    return cells


def images(book: nbformat.NotebookNode) -> int:
    return sum("image/png" in out.get("data", {}) for cell in book.cells for out in cell.get("outputs", []))


def main() -> int:
    for name in NAMES:
        book = execute(name)
        for cell in book.cells:           # no stderr noise (warnings) in the committed file
            if cell.cell_type == "code":
                cell.outputs = [
                    o for o in cell.outputs if not (o.get("output_type") == "stream" and o.get("name") == "stderr")
                ]
        nbformat.write(book, NOTEBOOKS / name)
        print(f"{NOTEBOOKS / name}: executed, {images(book)} figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
