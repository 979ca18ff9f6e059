"""The exception tree, in one place. The API maps each class to the SPEC §3 error envelope."""

from __future__ import annotations

from typing import Any


class AgentFactoryError(Exception):
    """Base of every error the product reports; `code` and `status` are the wire contract."""

    code = "E_INTERNAL"
    status = 500

    def __init__(self, message: str, *, details: list[Any] | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.retry_after = retry_after


class SchemaError(AgentFactoryError):
    code, status = "E_SCHEMA", 422


class CatalogError(AgentFactoryError):
    code, status = "E_CATALOG", 422


class AuthError(AgentFactoryError):
    code, status = "E_AUTH", 401


class NetworkPolicyError(CatalogError):
    """Agents with a network tool cannot be run here with their egress policy (SPEC §14) in force:
    no iptables, no permission, an engine on another host, an agents' bridge that lets agents reach
    each other. A 422 like any tool the server cannot offer: retrying does not help until the
    operator fixes the host, and agents without a network tool keep running."""


class ForbiddenError(AgentFactoryError):
    code, status = "E_FORBIDDEN", 403


class NotFoundError(AgentFactoryError):
    code, status = "E_NOT_FOUND", 404


class ConflictError(AgentFactoryError):
    code, status = "E_CONFLICT", 409


class QuotaError(AgentFactoryError):
    code, status = "E_QUOTA", 429


class NotPlacedError(AgentFactoryError):
    """The cluster has no node that can take the agent now (a swarm whose nodes lack the resources or
    the labels its constraints ask for): an agent that may wait (`queue_timeout_seconds`) goes back
    to the queue (SPEC §10) and is tried again after `retry_after` seconds; one that may not fails
    its launch. The message is the cluster's own reason."""

    code, status = "E_LAUNCH", 500


class CapacityError(AgentFactoryError):
    """The cluster runs as many agents as it may (SPEC §10) and the request asked not to queue."""

    code, status = "E_CAPACITY", 429


class RateLimitError(AgentFactoryError):
    code, status = "E_RATE_LIMIT", 429


class TooLargeError(AgentFactoryError):
    code, status = "E_TOO_LARGE", 413


class RuntimeUnavailableError(AgentFactoryError):
    """The container engine cannot be reached (or refused the call)."""

    code, status = "E_RUNTIME", 503


def error_body(*, code: str, message: str, request_id: str, details: list[Any] | None = None) -> dict[str, Any]:
    """The SPEC §3 error envelope: the one builder that HTTP, the edge middleware and MCP share."""
    return {"error": {"code": code, "message": message, "details": details or []}, "request_id": request_id}


class CatalogInvalid(Exception):
    """catalog.json is unreadable or does not validate; the server refuses to start."""
