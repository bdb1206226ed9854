"""The import seams: the eval CLI does not import the trainer, the task package does not import the config
system (the config imports the task registry, never the reverse), and the leaf modules import nothing of
seqzoo. Checked in a fresh interpreter (what a module really pulls in) and in the source (imports inside
functions too, which a fresh interpreter would only meet when the function runs)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SEQZOO = Path(__file__).resolve().parent.parent / "seqzoo"


def seqzoo_imports(path: Path) -> set[str]:
    """Every seqzoo module ``path`` imports, at any depth of the file (function-local imports included)."""
    package = ".".join(path.relative_to(SEQZOO.parent).with_suffix("").parts[:-1])  # e.g. seqzoo.eval
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "seqzoo"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
                out |= {mod} if node.module else {f"{base}.{a.name}" for a in node.names}
            elif node.module and node.module.split(".")[0] == "seqzoo":
                out.add(node.module)
    return out


def module_name(path: Path) -> str:
    parts = path.relative_to(SEQZOO.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """seqzoo module -> the seqzoo modules importing it loads: its static imports (function-local ones too, as
    if every function ran) and, for each, the packages above it (importing ``a.b.c`` runs ``a/__init__`` and
    ``a/b/__init__``)."""
    graph = {}
    for path in SEQZOO.rglob("*.py"):
        name = module_name(path)
        edges = set()
        try:
            imported = seqzoo_imports(path)
        except SyntaxError:  # a file being written that does not parse yet imports nothing (its own tests fail)
            continue
        for mod in imported:
            parts = mod.split(".")
            edges |= {".".join(parts[:k]) for k in range(1, len(parts) + 1)}
        graph[name] = edges
    for name in list(graph):  # a module's own packages run first
        parts = name.split(".")
        graph[name] |= {".".join(parts[:k]) for k in range(1, len(parts))}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_static_import_helper_resolves_relative_imports():
    found = seqzoo_imports(SEQZOO / "eval" / "base.py")
    assert {"seqzoo.common", "seqzoo.fields", "seqzoo.eval.heads"} <= found
    graph = import_graph()
    assert "seqzoo.eval" in reachable(graph, "seqzoo.config")  # the config does import the task registry
    assert "seqzoo.config" in reachable(graph, "seqzoo.trainer")


def test_no_import_cycle_through_the_config_and_the_task_package():
    """What the task package and the eval CLI load never comes back to the config or the trainer (a tool
    module under seqzoo/eval/ that nothing there imports, such as a sweep runner, may use the config)."""
    graph = import_graph()
    assert "seqzoo.config" not in reachable(graph, "seqzoo.config"), "seqzoo.config imports itself back"
    for start in ("seqzoo.eval", "seqzoo.eval.__main__", "seqzoo.eval.evaluate", "seqzoo.eval.heads"):
        back = reachable(graph, start) & {"seqzoo.config", "seqzoo.trainer"}
        assert not back, f"{start} loads {sorted(back)}"


@pytest.mark.parametrize("leaf, allowed", [("common.py", set()), ("fields.py", {"seqzoo.common"})])
def test_leaf_modules_import_nothing_of_seqzoo(leaf, allowed):
    assert seqzoo_imports(SEQZOO / leaf) <= allowed


def test_importing_the_eval_cli_loads_neither_the_trainer_nor_the_config():
    """In a fresh interpreter (one, to keep the suite fast: importing seqzoo takes seconds): the eval CLI and
    the task package come without the trainer and the config; importing the config after them works (the
    other order is what every other test does) and resolves a task section through the task registry."""
    res = subprocess.run([sys.executable, "-c", (
        "import sys, seqzoo.eval.__main__, seqzoo.eval.evaluate\n"
        "loaded = sorted(m for m in sys.modules if m in ('seqzoo.trainer', 'seqzoo.config'))\n"
        "assert not loaded, loaded\n"
        "from seqzoo.config import resolve\n"
        "cfg = resolve({'output_dir': 'x', 'model': {'model_type': 'transformer'}, 'task': {'name': 'mqar'}})\n"
        "assert cfg.task['seq_len'] == 64 and 'seqzoo.trainer' not in sys.modules\n"
        "print('ok')\n")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
