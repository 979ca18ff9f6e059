"""The Model Context Protocol endpoint: LLM hosts launch and watch agents as the caller's key.

`server` (the `/mcp` endpoint of the control plane) and `tools` need the server stack; `stdio`
(the relay behind `agentfactory mcp --stdio`) does not, so nothing is imported here.
"""
