"""structlog as one JSON object per line on stdout, with request_id / agent_id from contextvars.

Prompt text, agent output and secrets are never passed to the logger; callers log ids and figures.
An exception's traceback is logged with what a database error says about the data left out: the
engine hides statement parameters, and a driver's message (PostgreSQL's DETAIL: "Failing row
contains (...)") is reduced to its class and SQLSTATE.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Any

import structlog
from pydantic import ValidationError
from structlog.typing import EventDict, WrappedLogger

# Drivers whose messages may quote the data of a row, and SQLite, whose messages never do.
_DB_DRIVERS = ("psycopg", "psycopg2", "asyncpg", "pg8000", "sqlite3")


def _package_of(exc: BaseException) -> str:
    return type(exc).__module__.split(".")[0]


def _driver_error_text(exc: BaseException) -> str:
    kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
    if _package_of(exc) == "sqlite3":
        return f"({kind}) {str(exc).splitlines()[0] if str(exc) else ''}"
    sqlstate = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    return f"({kind}) SQLSTATE {sqlstate}" if sqlstate else f"({kind})"


def describe_error(exc: BaseException) -> str:
    """One line about an exception that is safe to log: no row data, no request input."""
    if _package_of(exc) == "sqlalchemy" and hasattr(exc, "statement"):  # a StatementError (only the store imports it)
        orig = getattr(exc, "orig", None)
        statement = (exc.statement or "").split("\n")[0][:200]
        cause = _driver_error_text(orig) if orig is not None else ""
        return f"{type(exc).__name__}: {cause} [SQL: {statement}]"
    if _package_of(exc) in _DB_DRIVERS:
        return _driver_error_text(exc)
    if isinstance(exc, ValidationError):
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['type']}" for e in exc.errors(include_input=False))
        return f"ValidationError: {where}"
    return f"{type(exc).__name__}: {exc}"


def format_exception(exc: BaseException) -> str:
    """The traceback of `exc` and the exceptions chained to it, each described by describe_error."""
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and all(e is not seen for seen in chain):
        chain.append(e)
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    parts: list[str] = []
    for i, e in enumerate(reversed(chain)):
        if i:
            parts.append("\nwhile handling it, another exception was raised:\n\n")
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_tb(e.__traceback__))
        parts.append(describe_error(e) + "\n")
    return "".join(parts)


def format_exc_info_safely(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """structlog's format_exc_info, but with format_exception: `exc_info` becomes `exception`."""
    exc_info: Any = event_dict.pop("exc_info", None)
    if not exc_info:
        return event_dict
    if exc_info is True:
        exc_info = sys.exc_info()
    exc = exc_info if isinstance(exc_info, BaseException) else exc_info[1] if isinstance(exc_info, tuple) else None
    if exc is not None:
        event_dict["exception"] = format_exception(exc)
    return event_dict


def configure_logging(level: str = "info") -> None:
    lvl = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(format="%(message)s", stream=sys.stdout, level=lvl, force=True)
    # uvicorn's access log would print raw paths and query strings; our middleware logs requests.
    logging.getLogger("uvicorn.access").disabled = True
    for noisy in ("urllib3", "docker", "httpx", "httpcore", "aiohttp.access", "alembic"):
        logging.getLogger(noisy).setLevel(max(lvl, logging.WARNING))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            format_exc_info_safely,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
    # Route the standard library's records (uvicorn, alembic) through structlog's JSON too.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=structlog.processors.JSONRenderer(),
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                format_exc_info_safely,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
