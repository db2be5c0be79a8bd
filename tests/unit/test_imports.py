"""Every module of trtsweep and of its Hydra sweepers imports alone, in a fresh interpreter, and no
module imports itself back through others: the import graph (every import statement, also those
inside functions, which run too, only later; not those under ``if TYPE_CHECKING:``) has no cycle."""

from __future__ import annotations

import ast
import graphlib
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"trtsweep": ROOT / "src" / "trtsweep",
            "hydra_plugins.trtsweep_sweepers": ROOT / "hydra_plugins" / "trtsweep_sweepers"}


def find_modules(packages: dict[str, Path]) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file below each package's directory."""
    out = {}
    for package, root in packages.items():
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = path
    return out


def _nearest(dotted: str, known: dict[str, Path]) -> str | None:
    """The longest prefix of ``dotted`` that is one of ``known`` (``import a.b as x`` imports ``a.b``)."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in known:
            return ".".join(parts[:n])
    return None


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The known modules that module ``name`` imports, at any level, except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    type_only = {id(n) for block in ast.walk(tree)
                 if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
                 for stmt in block.body for n in ast.walk(stmt)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    deps: set[str | None] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            deps.update(_nearest(a.name, known) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package, up level - 1
                base_parts = package.split(".")
                base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:  # `from pkg import module` imports the module; else the names' module
                sub = f"{base}.{alias.name}"
                deps.add(sub if sub in known else _nearest(base, known))
    deps.discard(None)
    deps.discard(name)
    return deps  # type: ignore[return-value]


def import_cycle(packages: dict[str, Path]) -> list[str] | None:
    """One import cycle among the packages' modules (``[a, b, …, a]``), or None."""
    known = find_modules(packages)
    graph = {name: imports_of(name, path, known) for name, path in known.items()}
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        return list(reversed(e.args[1]))  # graphlib lists it against the import direction
    return None


def test_no_import_cycle_among_trtsweep_modules():
    cycle = import_cycle(PACKAGES)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle_and_names_it(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from .sub import c\n")  # inside a function: counted
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.b\n"
                                      "import pkg.a as again\n")
    cycle = import_cycle({"pkg": pkg})
    assert cycle is not None and cycle[0] == cycle[-1]
    assert set(cycle) == {"pkg.a", "pkg.b", "pkg.sub.c"}, cycle
    (pkg / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n")
    assert import_cycle({"pkg": pkg}) is None  # a type-only import is not a cycle


def test_every_module_imports_alone_in_a_fresh_interpreter():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    names = sorted(find_modules(PACKAGES))
    assert "trtsweep.engines.onnx._quantize" in names and "hydra_plugins.trtsweep_sweepers._impl" in names

    def load(name: str) -> tuple[str, subprocess.CompletedProcess]:
        return name, subprocess.run([sys.executable, "-c", f"import {name}"], env=env, cwd=ROOT,
                                    capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=max(2, 2 * (os.cpu_count() or 1))) as pool:
        results = list(pool.map(load, names))
    failed = {name: (r.stderr.strip().splitlines() or ["?"])[-1] for name, r in results if r.returncode != 0}
    assert not failed, failed
