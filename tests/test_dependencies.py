"""pyproject.toml says the truth: every third-party module imported under src/ is a declared dependency."""

from __future__ import annotations

import ast
import importlib.metadata
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
# Not on PyPI (installed from git, see fidesr.data.prompts.RAM_INSTALL); the feature says so when absent.
UNDECLARABLE = {"ram"}


def _imported_top_level_modules() -> dict[str, str]:
    """{top-level module: first file importing it} over src/, absolute imports only."""
    found: dict[str, str] = {}
    for path in sorted((REPO / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else (
                    [node.module]
                    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                    else []
                )
            )
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


def test_every_third_party_import_is_declared() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # An optional extra counts: fidesr[app]'s gradio is imported by fidesr.app only, which says how to
    # install it when it is missing (tests/cli/test_app.py).
    extras = [r for reqs in project.get("optional-dependencies", {}).values() for r in reqs]
    declared = {canonicalize_name(Requirement(r).name) for r in [*project["dependencies"], *extras]}
    providers = importlib.metadata.packages_distributions()
    undeclared = []
    for module, where in _imported_top_level_modules().items():
        if module in sys.stdlib_module_names or module == "fidesr" or module in UNDECLARABLE:
            continue
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        if not dists & declared:
            undeclared.append(
                f"{module} (imported in {where}; provided by {sorted(dists) or 'nothing installed'})"
            )
    assert not undeclared, "imported but not in pyproject's dependencies: " + "; ".join(undeclared)
