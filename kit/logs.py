"""Logging for the served API: the access log never carries a query string (where contact data could sit)."""

from __future__ import annotations

import copy
import logging
from typing import Any


def without_query(path: str) -> str:
    """A request path with its query string cut off ('/customers?email=…' -> '/customers?…')."""
    head, mark, _ = path.partition("?")
    return f"{head}?…" if mark else head


class DropQueryStrings(logging.Filter):
    """Rewrites uvicorn's access records: (client, method, path, version, status) with the query removed."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep the record, minus its query string."""
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], without_query(args[2]), *args[3:])
        return True


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's own logging configuration with the query-dropping filter on its access log."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["drop_query_strings"] = {"()": "kit.logs.DropQueryStrings"}
    config["handlers"]["access"]["filters"] = ["drop_query_strings"]
    return config
