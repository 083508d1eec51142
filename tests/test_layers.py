"""The import layers, read from the source with ``ast`` (deferred imports inside functions included): the
paper components import nothing from the metrics, the callbacks, the LightningModule or the CLIs, nor from
Lightning, Hydra or W&B, and neither does any fidesr module they import (the weight files among them:
``fidesr.weights`` imports nothing of ``fidesr.metrics``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "fidesr"

#: What the components (and what they import) must not import: fidesr's upper layers ...
UPPER = ("fidesr.metrics", "fidesr.callbacks", "fidesr.model", "fidesr.cli")
#: ... and the frameworks (docs/ARCHITECTURE.md: "components import nothing from Lightning, Hydra or W&B").
FRAMEWORKS = ("lightning", "pytorch_lightning", "hydra", "omegaconf", "wandb")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_file(name: str) -> Path | None:
    """The source file of a fidesr module (a package's ``__init__.py``), or None (not a module: a name)."""
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imports_of(path: Path) -> set[str]:
    """Every module the source file ``path`` imports (see ``imports_in``)."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    return imports_in(path.read_text(), package, str(path))


def imports_in(code: str, package: str, filename: str = "<code>") -> set[str]:
    """Every module ``code`` (a module of ``package``) imports, at any depth of its code; ``from a import b``
    gives ``a`` and, where ``b`` is a module, ``a.b``; relative imports are made absolute."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(code, filename)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.add(module)
            for alias in node.names:
                if _module_file(f"{module}.{alias.name}") is not None:
                    found.add(f"{module}.{alias.name}")
    return found


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def fidesr_closure(start: list[Path]) -> dict[str, set[str]]:
    """{fidesr module: its imports} for ``start`` and every fidesr module they import, transitively (with
    the packages above each, whose ``__init__`` runs first)."""
    todo = [_module_name(p) for p in start]
    seen: dict[str, set[str]] = {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if path is None:
            continue
        seen[name] = imports_of(path)
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        todo += [m for m in (*seen[name], *parents) if _within(m, ("fidesr",)) and m not in seen]
    return seen


COMPONENTS = sorted((PACKAGE / "components").glob("*.py"))
WEIGHTS = sorted((PACKAGE / "weights").glob("*.py"))


def test_the_reader_sees_deferred_relative_and_from_imports() -> None:
    """The checks below are only as good as ``imports_in``: a deferred import, ``from fidesr import
    metrics`` and relative imports are all seen, and ``fidesr.model`` is not ``fidesr.model_files``."""
    code = (
        "def f():\n    from fidesr import metrics\n    import fidesr.callbacks.images\n"
        "from ..weights import store\nfrom . import daw\n"
    )
    found = imports_in(code, "fidesr.components")
    assert {
        "fidesr.metrics",
        "fidesr.callbacks.images",
        "fidesr.weights.store",
        "fidesr.components.daw",
    } <= found
    assert not _within("fidesr.model_files", UPPER) and _within("fidesr.model", UPPER)


@pytest.mark.parametrize("path", COMPONENTS, ids=lambda p: p.name)
def test_components_import_no_upper_layer_nor_framework(path: Path) -> None:
    closure = fidesr_closure([path])
    bad = {
        f"{module} imports {imported}"
        for module, imports in closure.items()
        for imported in imports
        if _within(imported, UPPER + FRAMEWORKS)
    }
    assert not bad, sorted(bad)


def test_the_weights_package_imports_nothing_of_the_metrics() -> None:
    assert WEIGHTS, "src/fidesr/weights/ has no modules"
    closure = fidesr_closure(WEIGHTS)
    bad = {
        f"{module} imports {imported}"
        for module, imports in closure.items()
        for imported in imports
        if _within(imported, ("fidesr.metrics",))
    }
    assert not bad, sorted(bad)
    assert "fidesr.weights.store" in closure and "fidesr.protocol" in closure  # the reader found them
