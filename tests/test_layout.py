"""The architecture as a test: imports only point down, and each room keeps to itself.

Read from the source (every ``import`` and ``from ... import``, including those inside functions),
so a lazy import cannot hide a dependency. Layers, lowest first:

- ``model`` (torch only) < ``engine`` < the service; ``settings``, ``masks`` and ``labelstudio``
  (the Label Studio formats and API client) sit beside ``engine`` and know no service code;
- in the service: ``contract`` and ``errors`` (shared by both processes) < ``store`` (state in
  Redis or memory) < ``jobs`` (worker side) and ``http`` (server side), which never import each
  other < ``server`` (the one module composing both, for embedded mode).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "seggpt_backend"

# module prefix -> prefixes it must not import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "seggpt_backend.model": (
        "seggpt_backend.engine", "seggpt_backend.service", "seggpt_backend.labelstudio", "redis", "rq",
        "fastapi", "seggpt_backend.settings",
    ),
    "seggpt_backend.engine": ("seggpt_backend.service", "seggpt_backend.labelstudio", "redis", "rq", "fastapi"),
    "seggpt_backend.labelstudio": ("seggpt_backend.service", "seggpt_backend.engine", "seggpt_backend.model"),
    "seggpt_backend.masks": ("seggpt_backend.service", "seggpt_backend.engine", "seggpt_backend.labelstudio"),
    "seggpt_backend.settings": ("seggpt_backend.service", "seggpt_backend.labelstudio"),
    "seggpt_backend.service.errors": ("seggpt_backend.service.",),
    "seggpt_backend.service.contract": (
        "seggpt_backend.service.store", "seggpt_backend.service.jobs", "seggpt_backend.service.http",
        "seggpt_backend.service.server",
    ),
    "seggpt_backend.service.store": (
        "seggpt_backend.service.jobs", "seggpt_backend.service.http", "seggpt_backend.service.server",
    ),
    "seggpt_backend.service.jobs": ("seggpt_backend.service.http", "seggpt_backend.service.server", "fastapi"),
    "seggpt_backend.service.http": ("seggpt_backend.service.jobs", "seggpt_backend.service.server", "torch"),
}  # fmt: skip


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path).split(".")
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here[: len(here) - node.level + (path.name == "__init__.py")]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def rule_for(module: str) -> tuple[str, ...]:
    """The forbidden prefixes of the most specific rule matching ``module``."""
    matches = [k for k in FORBIDDEN if module == k or module.startswith(k + ".")]
    return FORBIDDEN[max(matches, key=len)] if matches else ()


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_only_point_down(path: Path) -> None:
    module = module_name(path)
    forbidden = rule_for(module)
    bad = sorted(
        name
        for name in imported(path)
        if any(name == f.rstrip(".") or name.startswith(f if f.endswith(".") else f + ".") for f in forbidden)
        and not name.startswith(module)
    )
    assert not bad, f"{module} imports {bad}, above its layer (see this test's docstring)"


def test_the_rule_catches_an_upward_import(tmp_path: Path) -> None:
    # The checker itself: a store module importing the worker side is reported.
    fake = PACKAGE / "service" / "store" / "_probe_for_layout_test.py"
    fake.write_text("from seggpt_backend.service.jobs import entry\n")
    try:
        with pytest.raises(AssertionError, match="above its layer"):
            test_imports_only_point_down(fake)
    finally:
        fake.unlink()


def test_the_service_folders_are_the_rooms() -> None:
    service = PACKAGE / "service"
    rooms = sorted(p.name for p in service.iterdir() if p.is_dir() and not p.name.startswith("__"))
    assert rooms == ["http", "jobs", "store"]
    loose = sorted(p.name for p in service.glob("*.py"))
    assert loose == ["__init__.py", "contract.py", "errors.py", "server.py"]
