import numpy as np

from gliomatch.evaluation.engine import preservation, rank_of


def test_rank_breaks_ties_by_id_like_the_search():
    scores = np.array([0.5, 0.9, 0.5, 0.1, 0.9])
    order = np.lexsort((np.arange(5), -scores))  # the search's order: score desc, id asc
    assert [rank_of(scores, int(i)) for i in order] == [1, 2, 3, 4, 5]
    assert rank_of(scores, 4) == 2 and rank_of(scores, 2) == 4


def test_preservation_counts_ranks_within_k():
    assert preservation([1, 2, 6, 15, 16]) == {"top1": 0.2, "top5": 0.4, "top15": 0.8}
    assert preservation([3], ks=(2, 3)) == {"top2": 0.0, "top3": 1.0}
