"""The Docker fixtures of tests/agent/test_agent_docker.py, for the other Docker test modules."""

from test_agent_docker import docker_client, docker_run  # noqa: F401
