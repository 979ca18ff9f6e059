"""The use cases of the product, once for every door (HTTP, MCP, WebSocket, dashboard, CLI).

`Services` (context.py) is what the composition root builds; `agents`, `keys` and `streams` are the
use cases; `admission` decides whether an agent may run; `auth` knows who is calling; `views` turns
rows into wire models. Doors import from here and never from each other or from the runtime.
"""
