"""Clustering: k-reciprocal Jaccard distance + DBSCAN pseudo-labels (stage 1), multi-memory learning and
matching (stage 2), and the k-reciprocal re-ranking of test.py --rerank.

knn.py (knn_exact.py, knn_ties.py, knn_faiss.py)  exact k-nearest neighbours on any device, ties by index
reciprocal.py, jaccard_weights.py, jaccard.py       the sparse k-reciprocal Jaccard distance, step by step
dbscan.py                                           DBSCAN on it -> pseudo-labels
kmeans.py, matching.py, mmlm.py                     multi-memory learning (k-means) and matching
ari.py                                              adjusted Rand index diagnostics
rerank.py                                           query/gallery re-ranking at test time

The public API::

    from clustering import (compute_jaccard_distance, pseudo_labels, multi_memory_matching, MatchOptions,
                            match_clusters)
"""
from .dbscan import pseudo_labels
from .jaccard import compute_jaccard_distance
from .matching import match_clusters
from .mmlm import MatchOptions, multi_memory_matching

__all__ = ["compute_jaccard_distance", "pseudo_labels", "multi_memory_matching", "MatchOptions", "match_clusters"]
