"""The sweep package's import graph: every module imports only modules of its own or a lower layer, so
there are no cycles (function-local imports included: a cycle hidden in a function is still a cycle)."""

import ast
from pathlib import Path

import hybridlm.sweep

PACKAGE = Path(hybridlm.sweep.__file__).parent
# bottom to top; a module may import only modules listed before it (see hybridlm/sweep/__init__.py)
ORDER = ["specs", "conditions", "estimate", "state",                 # foundations
         "records", "lr_from",                                       # records
         "plan", "configs", "budget", "devices",                     # plan
         "plots", "summary", "overview", "compare",                  # report
         "queue", "worker", "processes", "progress", "job", "runner",  # run
         "cli"]


def sweep_imports(path: Path) -> set[str]:
    """The hybridlm.sweep modules `path` imports anywhere in its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hybridlm.sweep"):
            parts = node.module.split(".")
            if len(parts) > 2:
                found.add(parts[2])
            else:  # from hybridlm.sweep import x
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[2] for a in node.names if a.name.startswith("hybridlm.sweep."))
    return found


def test_every_module_has_a_layer():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set(ORDER)


def test_modules_import_only_downward():
    upward = []
    for name in ORDER:
        for imported in sweep_imports(PACKAGE / f"{name}.py"):
            if ORDER.index(imported) >= ORDER.index(name):
                upward.append(f"{name} imports {imported}")
    assert upward == []


def test_no_cycles():
    graph = {name: sweep_imports(PACKAGE / f"{name}.py") for name in ORDER}
    done, stack = set(), []

    def visit(node):
        if node in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(node):] + [node]))
        if node in done:
            return
        stack.append(node)
        for nxt in graph[node]:
            visit(nxt)
        stack.pop()
        done.add(node)

    for name in graph:
        visit(name)
