"""The server key and the log: derived values survive restarts; errors are logged without data."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy.exc
from sqlalchemy import text

from agentfactory.observability.logging import describe_error, format_exception
from agentfactory.schemas import AgentCreate
from agentfactory.store import Store
from agentfactory.store.server_key import ServerKey

SECRET = "sk-live-Wq9TrXv2Lm7Np4Kd"


def store_at(path: Path) -> Store:
    store = Store(f"sqlite:///{path}")
    store.migrate()
    return store


def load_server_key(store: Store) -> ServerKey:
    key = ServerKey()
    key.load(store)
    return key


def test_the_gateway_token_is_the_same_after_a_restart_and_differs_per_install(tmp_path: Path) -> None:
    first = store_at(tmp_path / "a.db")
    token = load_server_key(first).gateway_token("ag_one")
    first.dispose()
    again = store_at(tmp_path / "a.db")
    assert load_server_key(again).gateway_token("ag_one") == token
    assert load_server_key(again).gateway_token("ag_two") != token
    assert load_server_key(store_at(tmp_path / "b.db")).gateway_token("ag_one") != token
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    with pytest.raises(RuntimeError, match="not loaded"):
        ServerKey().gateway_token("ag_one")


def test_secure_delete_is_on(tmp_path: Path) -> None:
    with store_at(tmp_path / "a.db").engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA secure_delete").scalar() == 1


def test_a_failed_insert_is_logged_without_its_parameters(tmp_path: Path) -> None:
    store = store_at(tmp_path / "a.db")
    with store.session() as s:
        s.execute(text("CREATE TRIGGER refuse BEFORE INSERT ON server_keys BEGIN SELECT RAISE(ABORT, 'full'); END"))
    with pytest.raises(sqlalchemy.exc.IntegrityError) as failed, store.session() as s:
        s.execute(text("INSERT INTO server_keys VALUES (:n, :s, 1.0)"), {"n": "x", "s": SECRET})
    assert SECRET not in str(failed.value)
    logged = format_exception(failed.value)
    assert "sqlite3.IntegrityError) full" in logged and "INSERT INTO server_keys" in logged
    assert SECRET not in logged


def test_a_driver_message_quoting_the_row_is_reduced_to_its_class_and_sqlstate() -> None:
    class NotNullViolation(Exception):
        sqlstate = "23502"

    NotNullViolation.__module__ = "psycopg.errors"
    orig = NotNullViolation(f'null value in column "x"\nDETAIL:  Failing row contains (1, {SECRET}).')
    wrapped = sqlalchemy.exc.IntegrityError("INSERT INTO agents (x) VALUES (%s)", None, orig)
    try:
        try:
            raise orig
        except NotNullViolation as e:
            raise wrapped from e
    except sqlalchemy.exc.IntegrityError as e:
        logged = format_exception(e)
    assert SECRET not in logged and "NotNullViolation) SQLSTATE 23502" in logged
    assert "The above" not in logged and logged.count("Traceback") == 2


def test_a_validation_error_is_logged_without_its_input() -> None:
    with pytest.raises(Exception) as refused:
        AgentCreate.model_validate({"model": "echo", "prompt": "hi", "secrets": {"X": 7, "Y": SECRET}, "tools": SECRET})
    assert SECRET in str(refused.value)  # what pydantic would say
    assert SECRET not in describe_error(refused.value)
