"""Search strategies behind one interface: ``get_strategy(name, db).search(queries, k)``
(arrays of shape ``(nq, k)``; ``search_one(query, k)`` for one query's row)."""

from gliomatch.search import learned as _learned  # noqa: F401  (registers strategies)
from gliomatch.search import multitask as _multitask  # noqa: F401
from gliomatch.search import radiomics as _radiomics  # noqa: F401
from gliomatch.search import strategies as _strategies  # noqa: F401
from gliomatch.search.base import (
    Query,
    Strategy,
    available_strategies,
    describe_matches,
    dice,
    get_strategy,
    ready_strategies,
    register_strategy,
    top_k,
)

__all__ = [
    "Query",
    "Strategy",
    "available_strategies",
    "describe_matches",
    "dice",
    "get_strategy",
    "ready_strategies",
    "register_strategy",
    "top_k",
]
