"""Connected components: the one grouping rule for "things tied together, directly or through others".

The clean stage groups crops whose bytes or photos are copies of each other; the split stage groups crops
that share a photo or a duplicate group, so no group straddles two splits. Both are connected components
of an undirected graph; scipy's ``connected_components`` finds them in C.
"""
from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def connected_groups(n: int, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Component label (0..k-1) of each of ``n`` nodes, given edges ``first[i] -- second[i]``."""
    first, second = np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64)
    graph = coo_matrix((np.ones(len(first), dtype=np.int8), (first, second)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels
