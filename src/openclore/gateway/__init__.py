"""The access gateway: tunnels from host agents, public ports and URLs for renters."""
