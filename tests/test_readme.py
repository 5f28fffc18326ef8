"""The README opens with the two set-up commands and embeds the generated tables verbatim."""
from __future__ import annotations

import re

import pytest
from scripts_path import load_script  # tests/scripts_path.py

from spa import repo_root

ROOT = repo_root()
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_the_two_commands():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "make demo" in ci


@pytest.mark.parametrize("name, path", load_script("update_readme").TABLES.items())
def test_embedded_tables_are_the_generated_ones(name, path):
    block = re.search(rf"<!-- BEGIN {name} -->\n(.*?)<!-- END {name} -->", README, re.S)
    assert block, f"README.md lacks the {name} block"
    table = ROOT / path
    assert table.is_file(), f"{path} is embedded in README.md but not committed: generate it, then make readme"
    assert block.group(1) == table.read_text(), "run make readme"


def test_update_readme_replaces_only_the_block():
    update = load_script("update_readme")
    text = "a\n<!-- BEGIN demo -->\nold\n<!-- END demo -->\nb\n"
    assert update.embed(text, "demo", "| new |\n") == "a\n<!-- BEGIN demo -->\n| new |\n<!-- END demo -->\nb\n"
    with pytest.raises(ValueError, match="BEGIN nope"):
        update.embed(text, "nope", "x")


@pytest.mark.parametrize("args", [["T1=table1_mini"], ["ARGS=experiment=table1_mini dataset.root=x"]])
def test_reproduce_table1_aggregates_the_experiment_it_swept(args):
    import subprocess
    out = subprocess.run(
        ["make", "-n", "reproduce-table1", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any("scripts/run.py -m experiment=" in line and "table1_mini" in line for line in lines)
    assert any(line.endswith("scripts/table1.py table1_mini") for line in lines)
    assert any(line.endswith("scripts/figures.py table1_mini") for line in lines)


def test_reproduce_table1_runs_the_shared_stages_first_with_the_chosen_launcher():
    import subprocess

    out = subprocess.run(
        ["make", "-n", "reproduce-table1", "LAUNCHER=slurm", "ARGS=hydra.launcher.partition=gpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    sweeps = [line for line in out.stdout.splitlines() if "scripts/run.py -m" in line]
    assert len(sweeps) == 2 and all("launcher=slurm" in s and "hydra.launcher.partition=gpu" in s for s in sweeps)
    assert "pruning=none" in sweeps[0] and "pruning=none" not in sweeps[1]  # unpruned runs, then the pruned ones
