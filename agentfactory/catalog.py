"""Load and validate `catalog.json` (SPEC §2), and check an agent request against it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agentfactory.errors import CatalogError, CatalogInvalid, SchemaError

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"


class CatalogLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_ttl_seconds: int = Field(600, ge=1)
    max_ttl_seconds: int = Field(3600, ge=1)
    memory_mb: int = Field(512, ge=16)
    cpus: float = Field(1.0, gt=0)
    pids: int = Field(256, ge=16)
    max_log_bytes: int = Field(104_857_600, ge=1024)
    scratch_mb: int = Field(256, ge=1, description="size of the writable tmpfs scratch dir")
    max_artifact_bytes: int = Field(104_857_600, ge=0, description="bytes of artifacts kept per agent (SPEC §9)")
    default_token_budget: int = Field(100_000, ge=1)
    max_token_budget: int = Field(1_000_000, ge=1)
    max_steps: int = Field(32, ge=1, description="model turns an agent may take")
    tool_timeout_seconds: int = Field(300, ge=1, description="bound on one tool call")

    @model_validator(mode="after")
    def _ordered(self) -> CatalogLimits:
        if self.default_ttl_seconds > self.max_ttl_seconds:
            raise ValueError("default_ttl_seconds must not exceed max_ttl_seconds")
        if self.default_token_budget > self.max_token_budget:
            raise ValueError("default_token_budget must not exceed max_token_budget")
        return self


class CatalogModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ID_PATTERN)
    provider: Literal["echo", "openai"]
    description: str = ""
    base_url: str | None = None
    api_key_env: str | None = None
    upstream_model: str | None = Field(None, description="model name sent upstream (default: id)")
    tools: list[str] | None = Field(None, description="tools this model may be given (default: all)")
    timeout_seconds: float = Field(60, gt=0, description="bound on one upstream call")
    constraints: list[str] = Field(
        [], description="placement constraints of its agents on a swarm (Swarm syntax, e.g. node.labels.gpu==true)"
    )

    @model_validator(mode="after")
    def _openai_needs_url(self) -> CatalogModel:
        if self.provider == "openai" and not self.base_url:
            raise ValueError("an openai provider needs base_url")
        return self


class CatalogTool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ID_PATTERN)
    description: str = ""
    network: bool = False
    constraints: list[str] = Field(
        [], description="placement constraints of agents given this tool on a swarm (Swarm syntax)"
    )


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1]
    limits: CatalogLimits = CatalogLimits()
    runtime: str | None = Field(None, description="OCI runtime for agents, e.g. runsc (default: runc)")
    models: list[CatalogModel] = Field(min_length=1)
    tools: list[CatalogTool] = []

    @model_validator(mode="after")
    def _unique_and_known(self) -> Catalog:
        for kind, items in (("models", self.models), ("tools", self.tools)):
            ids = [i.id for i in items]
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise ValueError(f"duplicate {kind} id(s): {', '.join(dupes)}")
        tool_ids = {t.id for t in self.tools}
        for m in self.models:
            unknown = set(m.tools or []) - tool_ids
            if unknown:
                raise ValueError(f"model {m.id} names unknown tool(s): {', '.join(sorted(unknown))}")
        return self

    def model(self, model_id: str) -> CatalogModel | None:
        return next((m for m in self.models if m.id == model_id), None)

    def tool(self, tool_id: str) -> CatalogTool | None:
        return next((t for t in self.tools if t.id == tool_id), None)

    def check_request(self, *, model: str, tools: list[str], ttl_seconds: int | None) -> None:
        """Raise CatalogError / SchemaError when the request does not fit the catalog."""
        entry = self.model(model)
        if entry is None:
            raise CatalogError(
                f"unknown model {model!r}",
                details=[{"field": "model", "known": [m.id for m in self.models]}],
            )
        unknown = [t for t in tools if self.tool(t) is None]
        if unknown:
            raise CatalogError(
                f"unknown tool(s): {', '.join(unknown)}",
                details=[{"field": "tools", "unknown": unknown, "known": [t.id for t in self.tools]}],
            )
        if entry.tools is not None:
            refused = [t for t in tools if t not in entry.tools]
            if refused:
                raise CatalogError(
                    f"model {model!r} may not be given tool(s): {', '.join(refused)}",
                    details=[{"field": "tools", "refused": refused, "allowed": entry.tools}],
                )
        if ttl_seconds is not None and ttl_seconds > self.limits.max_ttl_seconds:
            raise SchemaError(
                f"ttl_seconds {ttl_seconds} is above the catalog's max_ttl_seconds {self.limits.max_ttl_seconds}",
                details=[{"loc": ["body", "ttl_seconds"], "max": self.limits.max_ttl_seconds}],
            )

    def constraints(self, model: str, tools: list[str]) -> tuple[str, ...]:
        """The placement constraints of an agent: its model's and its tools', each once, in order."""
        found = [*(m.constraints if (m := self.model(model)) else [])]
        for tid in tools:
            if (t := self.tool(tid)) is not None:
                found.extend(t.constraints)
        return tuple(dict.fromkeys(found))

    def needs_network(self, tools: list[str]) -> bool:
        return any((t := self.tool(tid)) is not None and t.network for tid in tools)


def load_catalog(path: Path) -> Catalog:
    """Read and validate the catalog; CatalogInvalid names the file and the wrong field."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise CatalogInvalid(f"{path}: catalog file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogInvalid(f"{path}: cannot read catalog: {exc}") from None
    except json.JSONDecodeError as exc:
        raise CatalogInvalid(f"{path}: not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    try:
        return Catalog.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise CatalogInvalid(f"{path}: invalid catalog: {problems}") from None
