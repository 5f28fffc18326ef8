"""Copy generated tables into README.md between <!-- BEGIN name --> and <!-- END name --> markers.

No number in the README is typed by hand: this script puts the generated tables there.
"""
from __future__ import annotations

import re
import sys

from spa import repo_root

# README block name -> generated file
TABLES = {name: f"results/tables/{name}.md" for name in (
    "demo", "probe", "params", "table1_mini", "table1_mini_claims", "table1_mini_cost", "table1_cost",
    "table1_imagenet_mini", "table1_imagenet_mini_claims", "table1_imagenet_mini_cost", "table1_imagenet_mini_lr",
    "block_spa_mini", "pear_mini", "vit_iclr_mini", "vit_iclr_mini_claims", "vit_iclr_cost",
    "vit_iclr_params", "imagenet_mini_budget", "block_spa_mini_budget", "evidence", "timm_compat", "latency_mini")}
TABLES.update({f"bench_{section}_cpu": f"results/benchmarks/{section}_cpu.md"
               for section in ("inference", "adapters", "training", "layers", "pruning", "blocks", "deploy", "tasks",
                               "latency_model", "latency_target", "checks")})


def embed(readme: str, name: str, table: str) -> str:
    pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
    if not pattern.search(readme):
        raise ValueError(f"README.md has no <!-- BEGIN {name} --> ... <!-- END {name} --> block")
    return pattern.sub(lambda m: m.group(1) + table + m.group(2), readme)


def main() -> int:
    root = repo_root()
    readme = (root / "README.md").read_text()
    for name, path in TABLES.items():
        table = root / path
        if table.is_file():
            readme = embed(readme, name, table.read_text())
    (root / "README.md").write_text(readme)
    print("README.md updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
