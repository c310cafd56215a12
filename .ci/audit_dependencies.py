"""Known vulnerabilities of the installed dependencies, from PyPI's JSON API (a fallback for `pip-audit`).

    .venv/bin/python .ci/audit_dependencies.py

`pip-audit` asks PyPI per installed version (/pypi/NAME/VERSION/json); where only the project-level endpoint answers
(as on the development machine), this asks that one instead: its `vulnerabilities` describe the latest release, so a
package is checked when the installed version is the latest, and listed as not checked otherwise. Exits 1 when a
vulnerability is listed. Not part of CI (it needs the network).
"""

from __future__ import annotations

import json
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import distributions


def project(name: str) -> dict:
    """PyPI's JSON for a project."""
    with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=20) as answer:
        return json.load(answer)


def main() -> None:
    """Check every installed distribution but the project itself; print a summary."""
    installed = sorted({(d.metadata["Name"], d.version) for d in distributions()
                        if d.metadata["Name"] and d.metadata["Name"] != "crm-retention"})
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda item: project(item[0]), installed))
    checked, older, found = [], [], []
    for (name, version), answer in zip(installed, answers, strict=True):
        if answer["info"]["version"] != version:
            older.append(f"{name} {version} (latest {answer['info']['version']})")
            continue
        checked.append(name)
        found += [f"{name} {version}: {v.get('id')} {v.get('summary') or ''}" for v in answer.get("vulnerabilities") or []]
    print(f"{len(checked)} of {len(installed)} packages checked (installed = latest release): "
          f"{len(found)} known vulnerabilities")
    for line in found:
        print("  VULNERABLE", line)
    if older:
        print("not checked (older than the latest release):", "; ".join(older))
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
