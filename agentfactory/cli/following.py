"""Following one agent from the command line (`run --follow`, `logs -f`): its lines and status
line through `render.FollowOutput`, Ctrl-C and SIGTERM, and the exit code its end maps to."""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any, NoReturn

from agentfactory.cli.options import (
    EXIT_UNREACHABLE,
    CliError,
)
from agentfactory.cli.render import (
    FollowOutput,
    print_event,
)
from agentfactory.client import AgentFollower, ApiClient, ClientError
from agentfactory.client_errors import ServerUnreachable

# --- following -------------------------------------------------------------------------------------


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a CI job being cancelled) is handled like Ctrl-C."""


def _raise_terminated(signum: int, frame: FrameType | None) -> NoReturn:
    raise _Terminated()


def follow_agent(
    client: ApiClient,
    agent_id: str,
    *,
    json_lines: bool,
    tail: int | None = None,
    streams: tuple[str, ...] = ("stdout", "stderr"),
    cancel_on_interrupt: bool = False,
) -> dict[str, Any] | None:
    """Streams the agent to its end; returns the terminal agent, or None when interrupted and detached."""
    out = FollowOutput(agent_id, json_lines=json_lines, streams=streams, status_line=True)
    follower = AgentFollower(client, agent_id, on_line=out.line, on_status=out.status, on_retry=out.retry, tail=tail)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        try:
            agent = follower.run()
        except KeyboardInterrupt:
            if not cancel_on_interrupt:
                return None
            out.note(f"cancelling {agent_id} (interrupt again to leave it running)")
            try:
                client.delete_agent(agent_id)
                agent = follower.run(max_seconds=10)
            except KeyboardInterrupt:
                out.note(f"left {agent_id} to finish cancelling on the server")
                return None
            except ClientError as exc:
                out.note(f"could not confirm that {agent_id} stopped: {exc}")
                return None
        except ServerUnreachable as exc:
            raise CliError(
                f"lost {exc.url} while following {agent_id} ({exc.cause}); "
                f"it may still be running: agentfactory logs -f {agent_id}",
                EXIT_UNREACHABLE,
            ) from exc
    finally:
        signal.signal(signal.SIGTERM, previous)
        out.close()
    if json_lines:
        print_event("end", agent=agent)
    elif agent.get("status") != "succeeded":
        detail = f"exit code {agent.get('exit_code')}, reason {agent.get('reason') or '-'}"
        error = f": {agent['error']}" if agent.get("error") else ""
        out.note(f"agent {agent_id} {agent.get('status')} ({detail}){error}")
    return agent
