"""``openclore mcp``: a Model Context Protocol server that lets AI agents rent GPUs.

It runs where the agent runs (like the SDK it is built on, it imports nothing of the server) and
talks to a market over its API with one API key: :mod:`.tools` holds the tools and the scope each
needs (a key is offered only the tools its scopes allow), :mod:`.server` builds the MCP server
over the official ``mcp`` SDK and serves it over stdio or streamable HTTP. docs/mcp.md says how to
plug it into an MCP client.
"""
