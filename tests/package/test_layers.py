"""Dependencies point one way: runtime <- toolkit <- calib, with demo, measure (mirasol-bench) and the commands on
top; nothing imports upward, so the runtime installs and runs without torch or the toolkit."""

import ast
from pathlib import Path

import mirasol_edge

PACKAGE = Path(mirasol_edge.__file__).parent
# What each part may import from the project (leaves first); anything not listed is upward.
ALLOWED = {
    "errors": set(),
    "console": {"errors"},  # the commands' stderr and their failure helper
    "assets": set(),
    "recipes": set(),
    "runtime": {"errors"},
    "toolkit": {"errors", "assets", "recipes", "runtime"},
    "calib": {"errors", "assets", "runtime", "toolkit"},
    "measure": {"errors", "console", "runtime"},  # mirasol-bench: stages, floors, stats, reports
    "serve": {"errors", "runtime"},  # Triton: the repository, the stream model inside it, the client
    "events": {"errors", "runtime"},  # where watch events go: webhook, MQTT, their spool
    "view": {"errors", "console", "runtime"},  # mirasol-run --view: the live page
    "demo": {"errors", "console", "assets", "runtime", "toolkit", "calib"},
    "cli": {"errors", "console", "assets", "runtime", "toolkit", "calib", "demo", "measure", "serve", "events", "view"},
}


def _part(module: str) -> str | None:
    names = module.split(".")
    return names[1] if names[0] == "mirasol_edge" and len(names) > 1 else None


def _imports(path: Path) -> set[str]:
    """Project modules a file imports, resolved from relative imports too (lazy ones included)."""
    package = ".".join(("mirasol_edge", *path.relative_to(PACKAGE).with_suffix("").parts[:-1]))
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                found.add(node.module)
    return {m for m in found if m.startswith("mirasol_edge")}


def test_no_part_imports_upward():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        part = rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.name != "__init__.py" else None
        if part is None:  # the package's own __init__ names the public API lazily
            continue
        for module in _imports(path):
            target = _part(module)
            if target and target != part and target not in ALLOWED[part]:
                wrong.append(f"{rel} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_every_part_is_placed():
    parts = {p.name.removesuffix(".py") for p in PACKAGE.iterdir() if not p.name.startswith(("_", "."))}
    assert parts - {"py.typed"} <= set(ALLOWED), parts - set(ALLOWED)


def test_no_source_file_is_long():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 350}
    assert not long, long
