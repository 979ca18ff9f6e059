"""Named servers and their keys: `~/.config/agentfactory/config.toml`, read by the CLI and the SDK.

    current-context = "prod"

    [contexts.local]
    url = "http://127.0.0.1:8000"
    api_key = "af_..."

    [contexts.prod]
    url = "https://agents.example.com"
    api_key = "af_..."

The file's place: `$AGENTFACTORY_CONFIG`, else `$XDG_CONFIG_HOME/agentfactory/config.toml`, else
`~/.config/agentfactory/config.toml`. It holds keys, so it is written with mode 0600.

Where a client's server and key come from, first match wins: the explicit argument (`--url`,
`--api-key`, `AgentFactory(url=..., api_key=...)`), the environment (`AGENTFACTORY_URL`,
`AGENTFACTORY_API_KEY`), the context (`--context`, `AGENTFACTORY_CONTEXT`, else `current-context`),
the default `http://127.0.0.1:8000` with no key.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class ConfigError(Exception):
    """The config file cannot be read, or names a context it does not have."""


@dataclass(frozen=True)
class Context:
    name: str
    url: str
    api_key: str | None = None


@dataclass
class Config:
    path: Path
    current: str | None = None
    contexts: dict[str, Context] = field(default_factory=dict)

    def get(self, name: str) -> Context:
        try:
            return self.contexts[name]
        except KeyError:
            known = ", ".join(sorted(self.contexts)) or "none"
            raise ConfigError(f"no context {name!r} in {self.path} (known: {known})") from None

    def save(self) -> None:
        """Writes the file atomically, readable by its owner only."""
        lines = []
        if self.current:
            lines.append(f"current-context = {_toml_string(self.current)}")
        for ctx in self.contexts.values():
            lines += ["", f"[contexts.{_toml_string(ctx.name)}]", f"url = {_toml_string(ctx.url)}"]
            if ctx.api_key:
                lines.append(f"api_key = {_toml_string(ctx.api_key)}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines).lstrip("\n") + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)


def config_path(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    if env.get("AGENTFACTORY_CONFIG"):
        return Path(env["AGENTFACTORY_CONFIG"])
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "agentfactory" / "config.toml"


def load_config(path: Path | None = None) -> Config:
    """The config file (an empty Config when there is none)."""
    path = path or config_path()
    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Config(path=path)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    contexts: dict[str, Context] = {}
    for name, entry in (raw.get("contexts") or {}).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            raise ConfigError(f"{path}: context {name!r} needs a url")
        key = entry.get("api_key")
        contexts[name] = Context(name=name, url=entry["url"], api_key=key if isinstance(key, str) and key else None)
    current = raw.get("current-context")
    return Config(path=path, current=current if isinstance(current, str) else None, contexts=contexts)


def check_name(name: str) -> str:
    if not name or not set(name) <= _NAME_CHARS or len(name) > 64:
        raise ConfigError(f"{name!r}: a context name is 1-64 letters, digits, '-', '_' or '.'")
    return name


def resolve(
    url: str | None = None,
    api_key: str | None = None,
    *,
    context: str | None = None,
    env: dict[str, str] | None = None,
) -> Context:
    """The server and key a client uses (see the module's docstring for the order)."""
    env = dict(os.environ) if env is None else env
    url = url or env.get("AGENTFACTORY_URL") or None
    api_key = api_key or env.get("AGENTFACTORY_API_KEY") or None
    name = context or env.get("AGENTFACTORY_CONTEXT") or None
    if url is not None and api_key is not None and name is None:
        return Context(name="", url=url, api_key=api_key)  # nothing to read from the file
    config = load_config(config_path(env))
    name = name or config.current
    chosen = config.get(name) if name else None
    if chosen is None:
        return Context(name="", url=url or DEFAULT_URL, api_key=api_key)
    # A context's key goes only to its own server: an explicit URL elsewhere gets no stored key.
    same_server = url is None or url.rstrip("/") == chosen.url.rstrip("/")
    return Context(
        name=chosen.name,
        url=url or chosen.url,
        api_key=api_key or (chosen.api_key if same_server else None),
    )


def _toml_string(value: str) -> str:
    out = ['"']
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)
