"""Clustering: k-reciprocal Jaccard distance + DBSCAN pseudo-labels (stage 1) and multi-memory
learning and matching (stage 2). The public API::

    from clustering import compute_jaccard_distance, pseudo_labels, multi_memory_matching, match_clusters
"""
from .dbscan import pseudo_labels
from .jaccard import compute_jaccard_distance
from .matching import match_clusters
from .mmlm import multi_memory_matching

__all__ = ["compute_jaccard_distance", "pseudo_labels", "multi_memory_matching", "match_clusters"]
