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


def test_the_static_import_helper_resolves_relative_imports():
    found = seqzoo_imports(SEQZOO / "eval" / "base.py")
    assert {"seqzoo.common", "seqzoo.fields", "seqzoo.eval.heads"} <= found


def test_nothing_in_seqzoo_eval_imports_the_config_or_the_trainer():
    for path in sorted((SEQZOO / "eval").rglob("*.py")):
        bad = {m for m in seqzoo_imports(path) if m in ("seqzoo.config", "seqzoo.trainer")
               or m.startswith(("seqzoo.config.", "seqzoo.trainer."))}
        assert not bad, f"{path.relative_to(SEQZOO.parent)} imports {sorted(bad)}"


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
