"""The notebooks run top to bottom (in a real kernel) on a small synthetic run tree, and are
committed executed on the committed tables, with outputs that a fresh execution reproduces."""
from __future__ import annotations

import nbformat
import pytest
from helpers import run_tree
from nbclient import NotebookClient
from scripts_path import load_script

from spa import repo_root

NOTEBOOKS = repo_root() / "notebooks"


def execute(name: str, env: dict[str, str], monkeypatch) -> nbformat.NotebookNode:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return book


def outputs(book) -> tuple[str, int]:
    """All text the cells printed or displayed, and the number of images."""
    text, images = [], 0
    for cell in book.cells:
        for out in cell.get("outputs", []):
            text.append(out.get("text", ""))
            data = out.get("data", {})
            text.append(data.get("text/markdown", "") + data.get("text/plain", ""))
            images += "image/png" in data
    return "\n".join(text), images


@pytest.mark.parametrize("name", ["01-results.ipynb", "02-parameter-budget.ipynb"])
def test_committed_notebooks_show_what_a_fresh_execution_shows(name):
    notebooks = load_script("notebooks")
    committed = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert notebooks.images(committed) > 0 and any(notebooks.text_outputs(committed)), \
        f"{name} is committed without outputs: run `make notebooks`"
    fresh = notebooks.execute(name)
    stale = [i for i, (a, b) in enumerate(zip(notebooks.text_outputs(committed), notebooks.text_outputs(fresh)))
             if a != b]
    assert not stale and notebooks.images(fresh) == notebooks.images(committed), \
        f"{name}: the outputs of code cells {stale} are stale: run `make notebooks` and commit the notebook"


def test_results_notebook_builds_and_shows_table1_from_a_run_tree(tmp_path, monkeypatch):
    run_tree(tmp_path / "runs" / "nbtest")
    book = execute("01-results.ipynb", {"SPA_EXP": "nbtest", "SPA_RESULTS_DIR": str(tmp_path)}, monkeypatch)
    text, images = outputs(book)
    assert (tmp_path / "tables" / "nbtest.md").is_file() and (tmp_path / "tables" / "nbtest_vs_paper.csv").is_file()
    figures = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    assert figures == ["nbtest_density_cifar10.png", "nbtest_figure6_cifar10.png"]
    assert "Table 1 (partial: 0 of 6 cells have 3 seeds)" in text
    # the synthetic fine-pruning cell at 30 % (95.5) against the paper's Taylor one
    assert "6 cells on both sides" in text and "SPLoRA-r8 − fine-pruning, 30 % density" in text
    assert images == 3        # the two committed-style figures and the notebook's own plot


def test_parameter_budget_notebook_counts_learned_parameters_by_density(monkeypatch):
    book = execute("02-parameter-budget.ipynb", {"SPA_BACKBONE": "resnet_mini", "SPA_CLASSES": "2",
                                                 "SPA_STEP": "0.3", "SPA_TARGET": "0.1"}, monkeypatch)
    text, images = outputs(book)
    # resnet_mini at 2 classes, unpruned: the counts of configs/experiment/table1_mini.yaml's header
    assert "1,239,170" in text and "85,538" in text and "24,026" in text
    assert images == 1
