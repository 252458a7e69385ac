"""The Compute Exchange provider agent: runs the workloads the platform leased to a provider's nodes and reports
heartbeats, progress, usage and completion. Standard library only; see ``agent/README.md``."""

from agent.daemon import Agent, AgentConfig

__all__ = ["Agent", "AgentConfig"]
