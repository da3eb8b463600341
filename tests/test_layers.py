"""Dependencies point one way. Every module's imports (module level and inside functions) are read
with ``ast``; an import that runs against the layer order, or that closes a circle of modules,
fails with its file and line.

Top to bottom: app → evaluation, server, report → components → trainer, tiny → rollout →
generation, environments → config, models, trainer/algorithms. A layer may import itself and
anything below it; ``environments`` imports nothing from ``icrl_cli``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("icrl_cli", "environments", "presets")
# Top first; a module belongs to the longest prefix that names it.
LAYERS: list[tuple[str, ...]] = [
    ("icrl_cli.app", "icrl_cli.app_support", "icrl_cli.__main__"),
    ("icrl_cli.evaluation", "icrl_cli.server", "icrl_cli.report"),
    ("icrl_cli.components",),
    ("icrl_cli.trainer", "icrl_cli.tiny"),
    ("icrl_cli.rollout",),
    ("icrl_cli.generation", "environments"),
    ("icrl_cli.adapters",),
    ("icrl_cli.config", "icrl_cli.models", "icrl_cli.trainer.algorithms", "presets"),
]
# A package's face (``icrl_cli/__init__.py``) defines its version and imports nothing.
FACES = {"icrl_cli": len(LAYERS) - 1}
# Whole packages that must not reach into others at all.
SEALED = {"environments": "icrl_cli"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            found[module_name(path, root)] = path
    return found


def imports_of(path: Path, name: str, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported module, line) for every import of a module of ``modules``; ``from P import m``
    names the submodule ``P.m`` when there is one."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.append((target, node.lineno))
    return found


def layer_of(name: str) -> int | None:
    if name in FACES:
        return FACES[name]
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), index)
    return None if best is None else best[1]


def layer_violations(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    modules = read_modules(root, packages)
    problems = []
    for name, path in modules.items():
        where = path.relative_to(root)
        for target, line in imports_of(path, name, modules):
            own, theirs = layer_of(name), layer_of(target)
            for sealed, forbidden in SEALED.items():
                if name.split(".")[0] == sealed and target.split(".")[0] == forbidden:
                    problems.append(f"{where}:{line}: {name} imports {target} ({sealed} is sealed)")
            if own is not None and theirs is not None and theirs < own:
                problems.append(f"{where}:{line}: {name} imports {target}, a layer above it")
    return problems


def circles(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """Each strongly connected group of more than one module, with the imports that tie it."""
    modules = read_modules(root, packages)
    edges = {name: imports_of(path, name, modules) for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for target, _ in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for name in modules:
        if name not in index:
            visit(name)
    report = []
    for group in groups:
        ties = [
            f"{modules[a].relative_to(root)}:{line} imports {b}"
            for a in group
            for b, line in edges[a]
            if b in group
        ]
        report.append(f"circle {' ↔ '.join(group)}: " + "; ".join(ties))
    return report


def test_imports_follow_the_layers():
    assert layer_violations() == []


def test_no_import_circles():
    assert circles() == []


def test_every_module_has_a_layer():
    assert [n for n in read_modules(ROOT, PACKAGES) if layer_of(n) is None] == []


def _tree(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checks_catch_a_back_import_and_a_circle(tmp_path):
    _tree(
        tmp_path,
        {
            "icrl_cli/__init__.py": "",
            "icrl_cli/rollout/__init__.py": "",
            "icrl_cli/rollout/sessions.py": "def f():\n    from icrl_cli.trainer import step\n",
            "icrl_cli/trainer/__init__.py": "",
            "icrl_cli/trainer/step.py": "from icrl_cli.rollout import sessions\n",
            "environments/__init__.py": "import icrl_cli.config\n",
            "icrl_cli/config.py": "",
        },
    )
    problems = layer_violations(tmp_path, ("icrl_cli", "environments"))
    assert problems == [
        "icrl_cli/rollout/sessions.py:2: icrl_cli.rollout.sessions imports "
        "icrl_cli.trainer.step, a layer above it",
        "environments/__init__.py:1: environments imports icrl_cli.config (environments is sealed)",
    ]
    found = circles(tmp_path, ("icrl_cli", "environments"))
    assert len(found) == 1
    assert "icrl_cli.rollout.sessions ↔ icrl_cli.trainer.step" in found[0]
    assert "icrl_cli/trainer/step.py:1 imports icrl_cli.rollout.sessions" in found[0]
