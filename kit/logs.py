"""Logging for every process: one JSON object per line (time, level, process, logger, message and the record's
context fields); the access log names the route template, never the raw path or query (where contact data could
sit)."""

from __future__ import annotations

import copy
import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

# Fields a record may carry (logger.info(..., extra={...})) that the JSON line keeps; anything else stays out.
CONTEXT_FIELDS = ("request_id", "method", "route", "status", "latency_ms", "key_id", "role", "job", "step",
                  "worker", "count")


# SDK loggers that write request URLs and parameters (recipients' numbers and addresses) at INFO or DEBUG.
QUIET_LIBRARIES = ("twilio", "twilio.http_client", "httpx", "httpcore", "urllib3", "python_http_client", "sendgrid")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers; the message is formatted from its arguments first."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        line: dict[str, Any] = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                                "level": record.levelname.lower(), "process": self.process, "pid": record.process,
                                "logger": record.name, "message": record.getMessage()}
        for field in CONTEXT_FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(process: str, level: str | None = None) -> None:
    """JSON lines on stderr for a process (`api`, `scheduler`, `dispatcher`, `journeys`); CRM_LOG_LEVEL sets the
    level (INFO by default)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(process))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("CRM_LOG_LEVEL") or "INFO").upper())
    for chatty in QUIET_LIBRARIES:
        logging.getLogger(chatty).setLevel(logging.WARNING)


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
    """uvicorn's logging as JSON lines; its own access log (raw paths) keeps the query-dropping filter in case it
    is turned on, though the app writes the access log itself (route templates, the acting key)."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"] = {"json": {"()": "kit.logs.JsonFormatter", "process": "api"}}
    for handler in config["handlers"].values():
        handler["formatter"] = "json"
    config.setdefault("filters", {})["drop_query_strings"] = {"()": "kit.logs.DropQueryStrings"}
    config["handlers"]["access"]["filters"] = ["drop_query_strings"]
    config["loggers"]["crm"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    config["root"] = {"handlers": ["default"], "level": os.environ.get("CRM_LOG_LEVEL", "INFO").upper()}
    config["loggers"].update({chatty: {"level": "WARNING"} for chatty in QUIET_LIBRARIES})
    return config
