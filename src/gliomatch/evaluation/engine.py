"""What ``evaluate`` and ``bench search`` share: the exact ranking of a query (the ground
truth), where a strategy's best match falls in it, and top-k preservation.

Strategies are reached only through their public interface (``search``; ``scores`` of any
strategy with exact scores for the ground truth: ``exact`` or ``loop`` alike).
"""

from __future__ import annotations

import numpy as np

from gliomatch.errors import GliomatchError
from gliomatch.search import Query

__all__ = ["KS", "exact_ranking", "preservation", "rank_of"]

#: The top-k preservations reported (the papers' top-1, top-5 and top-15).
KS = (1, 5, 15)


def exact_ranking(truth, query: Query):
    """Exact ``(scores, dice_t1gd, dice_flair)`` of every database tumor for ``query``, from
    ``truth``: a strategy whose :attr:`exact_scores` holds (``exact``, ``loop``)."""
    if not truth.exact_scores:
        raise GliomatchError(
            f"strategy {truth.name}'s scores are not the ground truth; use exact or loop"
        )
    return truth.scores(query)


def rank_of(all_scores: np.ndarray, i: int) -> int:
    """1-based rank of tumor ``i`` in the exact ranking (score descending, id ascending)."""
    s = all_scores[i]
    ahead = np.sum(all_scores > s) + np.sum((all_scores == s) & (np.arange(len(all_scores)) < i))
    return int(ahead + 1)


def preservation(ranks, ks=KS) -> dict[str, float]:
    """Fraction of queries whose answer's best match is in the exact top-k, for each k."""
    ranks = np.asarray(ranks)
    return {f"top{k}": float(np.mean(ranks <= k)) for k in ks}
