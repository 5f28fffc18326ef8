"""Write results/tables/params.{csv,md}: learned parameters of backbones × adapters (no training)."""
from __future__ import annotations

from spa import repo_root
from spa.reporting.params import parameter_markdown, parameter_table
from spa.utils import atomic_write_text


def main() -> None:
    table = parameter_table()
    out = repo_root() / "results" / "tables"
    atomic_write_text(out / "params.csv", table.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(out / "params.md", parameter_markdown(table))
    print(parameter_markdown(table))
    print(f"written: {out / 'params.csv'}, {out / 'params.md'}")


if __name__ == "__main__":
    main()
