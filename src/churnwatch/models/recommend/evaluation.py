"""Top-N recommendation quality against what customers really bought after the cutoff.

For each customer with at least one purchase in the horizon (the relevant items R_u, distinct):
hit rate HR@k = 1 if any of the k offers is in R_u; recall@k = |offers ∩ R_u| / min(k, |R_u|) (so a
perfect list scores 1 however much the customer bought); NDCG@k with binary gains, normalised by the ideal
list of min(k, |R_u|) hits. Coverage is the share of the catalogue that appears in anyone's offers.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse


def ranking_metrics(
    offers: np.ndarray, relevant: sparse.csr_matrix, k: int, n_items: int
) -> dict[str, float]:
    """`offers` (customers, ≥ k) catalogue indices best first (-1: none); `relevant` customers × items, any
    positive entry relevant (same row order). Customers without a relevant item are not counted."""
    offers = np.asarray(offers)[:, :k]
    rel = sparse.csr_matrix(relevant)
    counted = np.flatnonzero(np.diff(rel.indptr) > 0)
    if len(counted) == 0:
        return {
            f"hr@{k}": float("nan"),
            f"recall@{k}": float("nan"),
            f"ndcg@{k}": float("nan"),
            "coverage": 0.0,
            "customers": 0,
        }
    sub = rel[counted]
    rows = np.repeat(np.arange(len(counted)), offers.shape[1])
    cols = offers[counted].ravel()
    valid = cols >= 0
    hits = np.zeros(len(cols), dtype=bool)
    hits[valid] = np.asarray(sub[rows[valid], cols[valid]]).ravel() > 0
    hits = hits.reshape(len(counted), -1)
    n_rel = np.minimum(np.diff(sub.indptr), k)
    discount = 1.0 / np.log2(np.arange(2, offers.shape[1] + 2))
    dcg = (hits * discount).sum(axis=1)
    ideal = np.cumsum(discount)[n_rel - 1]
    shown = offers[offers >= 0]
    return {
        f"hr@{k}": float(hits.any(axis=1).mean()),
        f"recall@{k}": float((hits.sum(axis=1) / n_rel).mean()),
        f"ndcg@{k}": float((dcg / ideal).mean()),
        "coverage": float(len(np.unique(shown)) / n_items) if n_items else 0.0,
        "customers": len(counted),
    }
