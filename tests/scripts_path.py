"""Import a file of scripts/ as a module (scripts/ is not a package)."""
from __future__ import annotations

import importlib.util
from types import ModuleType

from spa import repo_root


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", repo_root() / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
