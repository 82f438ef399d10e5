"""Orchestrator: a Kubernetes-native API gateway (operator + proxy)."""

__version__ = "0.1.0"
