"""Layers stay honest: a package reads another package's tables only through that package's service functions."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from sqlmodel import SQLModel

from wiring.models import MODEL_MODULES

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("kit", "crm", "segmentation", "churn", "campaigns", "console", "wiring")
# wiring.models gathers every package's tables into one metadata for Alembic; that is its whole job.
ALLOWED = {"wiring/models.py"}
SQL_VERBS = r"(?:FROM|JOIN|INTO|UPDATE|TABLE)"


def _owners() -> tuple[dict[str, str], dict[str, str]]:
    """Table name -> owning package, and ORM class name -> owning package."""
    tables, classes = {}, {}
    for module in MODEL_MODULES:
        owner = module.__name__.split(".")[0]
        for name, value in vars(module).items():
            if isinstance(value, type) and issubclass(value, SQLModel) and hasattr(value, "__table__") \
                    and value.__module__ == module.__name__:
                classes[name] = owner
                tables[value.__table__.name] = owner
    for table in SQLModel.metadata.tables.values():
        tables.setdefault(table.name, "kit")
    return tables, classes


def _violations() -> list[str]:
    tables, classes = _owners()
    found = []
    names = "|".join(sorted(map(re.escape, tables), key=len, reverse=True))
    sql = re.compile(rf"\b{SQL_VERBS}\s+\"?({names})\"?\b")  # upper-case verbs: our SQL, not prose
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative in ALLOWED:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.endswith(".models"):
                    owner = node.module.split(".")[0]
                    if owner == package:
                        continue
                    for alias in node.names:
                        if classes.get(alias.name) == owner:
                            found.append(f"{relative}:{node.lineno} imports {owner}'s table class {alias.name}")
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    for match in sql.finditer(node.value):
                        owner = tables[match.group(1)]
                        if owner != package:
                            found.append(f"{relative}:{node.lineno} names {owner}'s table {match.group(1)} in SQL")
    return found


def test_no_package_reads_another_packages_tables():
    violations = _violations()
    assert violations == [], "read them through the owner's service functions:\n" + "\n".join(violations)


def test_the_check_sees_a_violation(tmp_path, monkeypatch):
    # The rule itself is tested: a module in campaigns that queries crm's orders table is caught.
    tables, _ = _owners()
    assert tables["orders"] == "crm" and tables["message"] == "campaigns" and tables["job_run"] == "kit"
    probe = ROOT / "campaigns" / "_layer_probe.py"
    probe.write_text('QUERY = "SELECT count(*) FROM orders"\nfrom crm.models import Customer\n', encoding="utf-8")
    try:
        found = _violations()
    finally:
        probe.unlink()
    assert any("_layer_probe.py:1 names crm's table orders" in v for v in found)
    assert any("_layer_probe.py:2 imports crm's table class Customer" in v for v in found)


QUERY_CALLS = {"select", "text", "driver_rows", "read_frame", "delete", "update", "insert"}
QUERY_METHODS = {"exec", "execute", "scalar", "scalars"}


def _api_modules() -> list[Path]:
    modules = [p for package in PACKAGES for p in (ROOT / package).rglob("api.py")]
    return sorted([*modules, ROOT / "console" / "pages.py", ROOT / "wiring" / "jobs_api.py", ROOT / "wiring" / "app.py"])


def _queries_in(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in QUERY_CALLS:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} calls {func.id}()")
        elif isinstance(func, ast.Attribute) and (
                func.attr in QUERY_METHODS or (func.attr == "get" and isinstance(func.value, ast.Name)
                                               and func.value.id == "session")):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} calls .{func.attr}()")
    return found


def test_api_modules_hold_no_queries():
    found = [q for path in _api_modules() for q in _queries_in(path)]
    assert found == [], "API modules translate HTTP; queries belong in a service:\n" + "\n".join(found)


def test_the_query_check_sees_a_query(tmp_path):
    probe = tmp_path / "api.py"
    probe.write_text("def rows(session):\n    return session.exec(select(X)).all()\n", encoding="utf-8")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert len(_queries_in(probe)) == 2
    finally:
        ROOT = saved
