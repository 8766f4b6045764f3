"""Cluster memories (stage 1), prototypes and clean probabilities (stage 2)."""
from .cluster_memory import ClusterMemory

__all__ = ["ClusterMemory"]
