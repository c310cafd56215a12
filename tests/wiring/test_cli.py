"""The `crm` command: real subprocesses against a scratch database; errors are one line, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

from sqlalchemy import text

from kit.db import make_engine
from tests.conftest import cli_env

CRM = [sys.executable, "-m", "wiring.cli"]


def _crm(args, env, **kw):
    return subprocess.run([*CRM, *args], env=env, capture_output=True, text=True, timeout=120, **kw)


def test_generate_import_and_keys(scratch_url, tmp_path):
    env = cli_env(scratch_url, tmp_path)
    assert _crm(["migrate"], env).returncode == 0
    generated = _crm(["generate", "--customers", "300", "--seed", "5", "--end", "2026-06-01", "--out",
                      str(tmp_path / "data")], env)
    assert generated.returncode == 0, generated.stderr
    for kind, name in (("customers", "customers"), ("orders", "orders"), ("order-items", "order_items"),
                       ("events", "events")):
        result = _crm(["import", kind, str(tmp_path / "data" / f"{name}.csv")], env)
        assert result.returncode == 0, result.stderr
        assert "0 failed" in result.stdout
    again = _crm(["import", "orders", str(tmp_path / "data" / "orders.csv")], env)
    assert " 0 inserted, 0 updated" in again.stdout
    segmented = _crm(["segment", "run", "--as-of", "2026-06-01", "--json"], env)
    assert segmented.returncode == 0, segmented.stderr
    summary = json.loads(_crm(["segment", "summary", "--json"], env).stdout)
    assert summary["customers"] == 300 and summary["as_of"].startswith("2026-06-01")
    assert sum(cell["customers"] for cell in summary["distribution"]["tier"].values()) == 300
    engine = make_engine(scratch_url)
    with engine.begin() as connection:  # the derived state is thrown away; the command derives it again
        kept = connection.execute(text("SELECT sum(lifetime_orders) FROM customer_state")).scalar_one()
        connection.execute(text("DELETE FROM customer_state"))
    rebuilt = _crm(["state", "rebuild"], env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert rebuilt.stdout.startswith("rebuilt 300 customers' state")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT sum(lifetime_orders) FROM customer_state")).scalar_one() == kept > 0
    engine.dispose()
    bad_day = _crm(["segment", "run", "--as-of", "June"], env)
    assert bad_day.returncode != 0 and bad_day.stderr.strip() == "error: --as-of: 'June' is not a date (YYYY-MM-DD)"
    created = _crm(["keys", "create", "--role", "support", "--name", "desk"], env)
    assert created.returncode == 0
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("crm_") and len(key) > 40
    engine = make_engine(scratch_url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM customer")).scalar_one() == 300
        assert connection.execute(text("SELECT role FROM api_key")).scalar_one() == "support"
    engine.dispose()


def test_user_errors_are_one_line_and_non_zero(scratch_url, tmp_path):
    env = cli_env(scratch_url, tmp_path)
    _crm(["migrate"], env)
    cases = [
        ["import", "orders", str(tmp_path / "missing.csv")],
        ["generate", "--end", "yesterday", "--out", str(tmp_path / "x")],
    ]
    (tmp_path / "bad.csv").write_text("external_id,amount_paid\nO1,5\n")
    cases.append(["import", "orders", str(tmp_path / "bad.csv")])
    for args in cases:
        result = _crm(args, env)
        assert result.returncode != 0, args
        assert "Traceback" not in result.stderr + result.stdout, args
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        assert result.stderr.startswith("error:"), (args, result.stderr)


def test_missing_secret_key_is_a_clear_error(scratch_url, tmp_path):
    env = cli_env(scratch_url, tmp_path)
    del env["CRM_SECRET_KEY"]
    result = _crm(["keys", "list"], env)
    assert result.returncode == 1 and "CRM_SECRET_KEY" in result.stderr and "Traceback" not in result.stderr


def test_version_and_usage_errors_in_clicks_own_form(scratch_url, tmp_path):
    from wiring import __version__

    env = cli_env(scratch_url, tmp_path)
    version = _crm(["--version"], env)
    assert version.returncode == 0 and version.stdout.strip() == f"crm {__version__}"
    for args, usage in ((["keys", "create"], "Usage: crm keys create"), (["nosuch"], "Usage: crm [OPTIONS]"),
                        (["keys", "create", "--role", "root", "--name", "x"], "'root' is not one of"),
                        (["import", "widgets", "x.csv"], "'widgets' is not one of")):
        result = _crm(args, env)
        assert result.returncode == 2, (args, result.returncode)
        assert usage in result.stderr and "--help" in result.stderr and "Traceback" not in result.stderr, args


def test_debug_shows_the_traceback_an_unexpected_error_otherwise_hides(tmp_path):
    env = cli_env("postgresql+psycopg://nobody@127.0.0.1:1/none", tmp_path)  # nothing listens on port 1
    quiet = _crm(["migrate"], env)
    assert quiet.returncode == 1 and "Traceback" not in quiet.stderr and len(quiet.stderr.strip().splitlines()) == 1
    loud = _crm(["--debug", "migrate"], env)
    assert loud.returncode == 1 and "Traceback (most recent call last)" in loud.stderr
    assert "Traceback (most recent call last)" in _crm(["migrate"], env | {"CRM_DEBUG": "1"}).stderr


def test_every_option_explains_itself_and_choices_are_listed():
    from enum import Enum

    from typer.main import get_command

    from crm.models import Role
    from wiring.cli import app

    missing, choices = [], {}

    def walk(command, path):
        for param in command.params:
            if param.param_type_name == "option" and param.name != "help" and not param.help:
                missing.append(f"{path} --{param.name}")
            annotation = param.type_descriptor.annotation
            if isinstance(annotation, type) and issubclass(annotation, Enum):
                choices[f"{path} {param.name}"] = [member.value for member in annotation]
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(get_command(app), "crm")
    assert not missing, missing
    assert choices["crm keys create role"] == [role.value for role in Role]
    assert choices["crm import kind"] == ["customers", "orders", "order-items", "events"]
    assert choices["crm churn evaluate policy"] == ["precision", "capacity", "value"]


def test_report_cells_are_formatted_for_people():
    from kit.cli import human_number

    assert human_number(6458123.4, "historical_total") == "6,458,123"
    assert human_number(492.083, "historical_mean") == "492.08"
    assert human_number(1262, "customers") == "1,262"
    assert human_number(0.4444, "retention_30d") == "44.4%" and human_number(0.0632, "share") == "6.3%"
    assert human_number(0.000123, "p_value") == "0.000123" and human_number(None) == "–"
    assert human_number(True) == "True" and human_number("VIP") == "VIP"
