"""The package's modules import each other without a circle: every module can be read, tested
and moved knowing only what it imports. Counted over every import, those inside functions too
(a lazy import still ties two modules together). `from package import name` counts as an import
of the submodule when `name` is one, not of the package's __init__, as Python resolves it."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest
from conftest import REPO


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports. Built with ast because the usual tools
    (pydeps, import-linter) are not in the lock, and this is all that is needed of them."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}

    def owner(name: str) -> str | None:  # the innermost module of the package that holds it
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {owner(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                subs = {f"{base}.{a.name}" for a in node.names}
                imported |= {owner(s) for s in subs if s in files}
                if any(s not in files for s in subs):
                    imported.add(owner(base))
        graph[name] = {m for m in imported if m and m != name}
    return graph


def test_the_package_has_no_import_circle():
    graph = import_graph(REPO / "src" / "tunebench")
    assert "tunebench.training.launch" in graph and graph["tunebench.training.launch"]
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as err:
        pytest.fail("import circle: " + " -> ".join(err.args[1]))


def test_a_circle_through_a_lazy_import_is_found(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from .. import c\n")
    (package / "c.py").write_text("import pkg.a\n")
    graph = import_graph(package)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.c"}
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter(graph).prepare()
