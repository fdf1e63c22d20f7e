"""One search interface for every strategy: ``build(db)``, then ``search(query, k)``.

A strategy is constructed from a :class:`~gliomatch.database.Database`, builds its index under
the database's ``index/`` folder (or loads it lazily) and answers
``search(query, k) -> (scores, ids)`` with scores descending and ties broken by the smaller id.

Score (the papers' query): ``w_t1gd * Dice_T1Gd + w_flair * Dice_FLAIR`` with the database
tumor thresholded at u = 0.6 (T1Gd, tumor core) and u = 0.2 (FLAIR, whole tumor).

Dice convention: ``Dice(A, B) = 2 |A & B| / (|A| + |B|)``, and ``Dice = 1`` when both masks are
empty (they agree perfectly). An empty query T1Gd mask is allowed: every database tumor has a
non-empty core, so its T1Gd Dice is then 0 and only FLAIR ranks the matches.
"""

from __future__ import annotations

import abc
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gliomatch.database.sampling import IDENTIFIABLE
from gliomatch.errors import GliomatchError, check_count
from gliomatch.files import stale_temporaries
from gliomatch.masks import dice, masks_from_codes
from gliomatch.progress import Progress, report

__all__ = [
    "THETA",
    "Query",
    "RerankStrategy",
    "Strategy",
    "available_strategies",
    "describe_matches",
    "dice",
    "get_strategy",
    "ready_strategies",
    "register_strategy",
    "top_k",
]


def _as_mask(arr, name: str, shape) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise GliomatchError(f"{name} mask must be 3-D, got shape {arr.shape}")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise GliomatchError(
            f"{name} mask has shape {arr.shape} but the database grid is {tuple(shape)}; "
            "warp/resample the mask into atlas space first"
        )
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "biuf":
        raise GliomatchError(f"{name} mask has non-numeric type {arr.dtype}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise GliomatchError(f"{name} mask contains NaN or infinite values")
    values = np.unique(arr)
    if not np.all(np.isin(values, (0, 1))):
        shown = ", ".join(f"{v:g}" for v in values[:6])
        raise GliomatchError(
            f"{name} mask is not binary (values {shown}{'...' if len(values) > 6 else ''}); "
            "pass a 0/1 mask (for a BraTS label map use `gliomatch infer --seg`)"
        )
    return arr.astype(bool)


@dataclass(frozen=True)
class Query:
    """The two patient masks in atlas space: FLAIR (whole tumor) and T1Gd (tumor core, always
    inside FLAIR), with the affine of their grid when known.

    A strategy refuses a query whose grid (shape, and affine when given) is not its
    database's.
    """

    flair: np.ndarray
    t1gd: np.ndarray
    affine: np.ndarray | None = None

    @classmethod
    def from_masks(cls, flair, t1gd, shape=None, affine=None) -> Query:
        """Validated query: 3-D, binary, on ``shape`` (the database grid), FLAIR non-empty;
        T1Gd voxels outside FLAIR are dropped with a warning (the core is part of the whole
        tumor: this is the one place that enforces it)."""
        f = _as_mask(flair, "FLAIR", shape)
        t = _as_mask(t1gd, "T1Gd", shape if shape is not None else f.shape)
        if t.shape != f.shape:
            raise GliomatchError(f"FLAIR {f.shape} and T1Gd {t.shape} masks differ in shape")
        if not f.any():
            raise GliomatchError("FLAIR (whole tumor) mask is empty: nothing to match")
        outside = int(np.count_nonzero(t & ~f))
        if outside:
            warnings.warn(
                f"{outside} T1Gd voxels lie outside the FLAIR mask; the tumor core is part of "
                "the whole tumor, so the search uses T1Gd inside FLAIR only",
                stacklevel=2,
            )
        if affine is not None:
            affine = np.asarray(affine, dtype=np.float64)
            if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
                raise GliomatchError(f"query affine must be a finite 4x4 matrix, got {affine}")
        return cls(f, t & f, affine)

    @classmethod
    def from_codes(cls, codes: np.ndarray, affine=None) -> Query:
        """The query made of a database tumor's own masks (its core lies inside its FLAIR)."""
        f, t = masks_from_codes(codes)
        return cls(f, t, affine)


#: Tumor parameters reported with every match (seed in mm, D_w, rho, T_end).
THETA = ("x_mm", "y_mm", "z_mm", "dw", "rho", "t_end")
SEED = THETA[:3]
#: A match's simulation parameters: not identifiable separately from one scan.
SIMULATED = THETA[3:]


def describe_matches(db, query: Query, scores, ids) -> list[dict]:
    """Rank, id, score, both full-resolution Dice terms, the seed and the identifiable
    quantities of each match, and the (D_w, rho, T_end) it was simulated with: one member of
    the family that grows the same tumor, not an estimate (see ``NOT_IDENTIFIABLE``)."""
    f, t = query.flair, query.t1gd
    params = db.params
    rows = []
    for rank, (s, i) in enumerate(zip(scores, ids, strict=True), 1):
        mf, mt = db.masks(int(i))
        r = params.iloc[int(i)]
        rows.append(
            {
                "rank": rank,
                "id": int(i),
                "score": float(s),
                "dice_t1gd": dice(mt, t),
                "dice_flair": dice(mf, f),
                "seed_mm": {p: float(r[p]) for p in SEED},
                "identifiable": {p: float(r[p]) for p in IDENTIFIABLE},
                "simulated_with": {p: float(r[p]) for p in SIMULATED},
            }
        )
    return rows


def top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best (score descending, id ascending on ties).

    A partial selection (``np.partition``) keeps every candidate tied with the k-th score,
    then sorts only those: the same answer as sorting all (:func:`top_k_reference`), without
    sorting 50,000 scores per query."""
    scores, ids = np.asarray(scores), np.asarray(ids)
    n = len(scores)
    if k >= n // 8:
        return top_k_reference(scores, ids, k)
    neg = -scores
    kth = np.partition(neg, k - 1)[k - 1]
    cand = np.flatnonzero(neg <= kth)
    order = cand[np.lexsort((ids[cand], neg[cand]))][:k]
    return scores[order], ids[order]


def top_k_reference(scores: np.ndarray, ids: np.ndarray, k: int):
    """:func:`top_k` by sorting every score: the obviously correct reference."""
    order = np.lexsort((ids, -np.asarray(scores)))[:k]
    return np.asarray(scores)[order], np.asarray(ids)[order]


#: Largest score weight (scores stay finite and comparable).
MAX_WEIGHT = 1e6


class Strategy(abc.ABC):
    """Base class: subclasses set ``name`` and implement ``_build``, ``_load``, ``_search``."""

    name: str = ""
    #: True when the strategy's index must be built before searching.
    needs_index: bool = True
    #: "similarity" (scores: higher is better) or "distance" (lower is better), like FAISS's
    #: ``metric_type``.
    metric: str = "similarity"
    #: True for strategies that rank compressed codes (learned codes, embeddings): re-ranking
    #: their candidates with the exact Dice (``NAME+rrM``) is what makes them exact-ish.
    compressed: bool = False
    #: The scores returned are the full-resolution weighted Dice (the ground truth's own), not
    #: a proxy (a downsampled Dice, a code distance): callers may use them as such.
    exact_scores: bool = False
    #: The top-k returned is the exhaustive search's (ties by id): a ground truth.
    exact_ranking: bool = False

    def __init__(
        self, db, *, w_t1gd: float = 1.0, w_flair: float = 1.0, progress: Progress | None = None
    ):
        for nm, w in (("w_t1gd", w_t1gd), ("w_flair", w_flair)):
            if not np.isfinite(w) or not 0 <= w <= MAX_WEIGHT:
                raise GliomatchError(f"{nm} must be a weight in [0, {MAX_WEIGHT:g}], got {w}")
        if w_t1gd == 0 and w_flair == 0:
            raise GliomatchError("at least one of w_t1gd, w_flair must be > 0")
        self.db = db
        self.w_t1gd = float(w_t1gd)
        self.w_flair = float(w_flair)
        self.progress = progress if callable(progress) else None
        self._loaded = False

    # ---------------------------------------------------------------- index files
    @property
    def index_path(self) -> Path:
        return self.db.path / "index" / self.name

    def _meta(self) -> dict:
        return {"strategy": self.name, "db": self.db.fingerprint, "n": len(self.db)}

    def is_built(self) -> bool:
        return self.db.is_built(self.name, self.index_path, self._meta())

    def index_info(self) -> dict:
        """The built index's size on disk (bytes) and how long building it took (seconds;
        None for an index built before gliomatch recorded it, or no index at all)."""
        if not self.needs_index or not self.is_built():
            return {"index_bytes": 0, "build_seconds": None}
        files = [p for p in self.index_path.rglob("*") if p.is_file()]
        meta = json.loads((self.index_path / "meta.json").read_text())
        return {
            "index_bytes": int(sum(p.stat().st_size for p in files)),
            "build_seconds": meta.get("build_seconds"),
        }

    def build(self) -> Strategy:
        """Build the index from the database and save it (atomically) under ``index/``; its
        files' checksums go into the database manifest."""
        if self.needs_index:
            index_dir = self.db.path / "index"
            tmp = index_dir / f".tmp-{self.name}-{os.getpid()}"
            try:
                index_dir.mkdir(exist_ok=True)
                for stale in stale_temporaries(index_dir):  # left by a killed build
                    shutil.rmtree(stale, ignore_errors=True)
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
                t0 = time.perf_counter()
                self._build(tmp)
                built = {"build_seconds": round(time.perf_counter() - t0, 3)}
                (tmp / "meta.json").write_text(json.dumps({**self._meta(), **built}))
                shutil.rmtree(self.index_path, ignore_errors=True)
                os.replace(tmp, self.index_path)
                self.db.record_files(self.name, self.index_path)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise GliomatchError(
                    f"cannot write the {self.name} index in {index_dir} "
                    f"({exc.strerror or exc}); build it where the database is writable "
                    f"(`gliomatch db index DB --strategy {self.name}`) or free some space"
                ) from exc
        self._loaded = False
        return self

    def ensure_ready(self) -> Strategy:
        """The explicit build step: build the index if it is missing (writing it and its
        checksums into the database), then :meth:`load` it. Searching never builds."""
        if not self._loaded and self.needs_index and not self.is_built():
            self.build()
        return self.load()

    def load(self) -> Strategy:
        """Load the built index after checking its files against the manifest; never writes.
        Raises :class:`GliomatchError` naming the build command when it is not built."""
        if self._loaded:
            return self
        if self.needs_index:
            if not self.is_built():
                self._check_buildable()  # e.g. no trained model: say that first
                raise GliomatchError(
                    f"the {self.name} index of {self.db.path} is not built; build it with "
                    f"`gliomatch db index DB --strategy {self.name}` (Python: "
                    f"get_strategy({self.name!r}, db).ensure_ready())"
                )
            self.db.check_files(self.name, self.index_path)
            try:
                self._load(self.index_path)
            except GliomatchError:
                raise
            except Exception as exc:  # a file that passed its checksum yet does not load
                raise GliomatchError(
                    f"index {self.index_path}: unreadable ({type(exc).__name__}: {exc}); "
                    f"rebuild it with `gliomatch db index DB --strategy {self.name}`"
                ) from exc
        self._loaded = True
        return self

    # ---------------------------------------------------------------- search
    def score(self, dice_t1gd, dice_flair):
        return self.w_t1gd * dice_t1gd + self.w_flair * dice_flair

    def search(self, queries, k: int = 15) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` tumors of each query, best first, like FAISS's ``index.search(xq, k)``.

        Parameters
        ----------
        queries : sequence of Query
            The batch (one :class:`Query` is a batch of one).
        k : int
            Matches per query; cut to the database's size.

        Returns
        -------
        scores, ids : ndarray, shape (nq, k)
            Always two-dimensional. :attr:`metric` says whether the scores are similarities
            (higher is better) or distances (lower is better); :attr:`exact_scores` and
            :attr:`exact_ranking` whether they are the ground truth's.

        Examples
        --------
        >>> qs = [Query.from_codes(db.codes(i), affine=db.affine) for i in (0, 4)]
        >>> scores, ids = get_strategy("exact", db).search(qs, 3)
        >>> ids.shape, ids[:, 0].tolist()
        ((2, 3), [0, 4])
        """
        batch = [queries] if isinstance(queries, Query) else list(queries)
        if not batch:
            raise GliomatchError("no query to search")
        for q in batch:
            self._check_query(q)
        k = min(check_count(k, "k"), len(self.db))
        self.load()
        scores, ids = self._search_batch(batch, k)
        scores = np.asarray(scores, dtype=np.float64).reshape(len(batch), k)
        ids = np.asarray(ids, dtype=np.int64).reshape(len(batch), k)
        return scores, ids

    def search_one(self, query: Query, k: int = 15) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` of one query, its row: ``(scores, ids)`` of shape ``(k,)``."""
        if not isinstance(query, Query):
            raise GliomatchError("search_one needs one Query (a batch goes to search)")
        scores, ids = self.search([query], k)
        return scores[0], ids[0]

    def scores(self, query: Query, ids=None):
        """Exact ``(score, dice_t1gd, dice_flair)`` arrays of the tumors ``ids`` (default: all)
        for ``query``: the ground truth, answered by the strategies with :attr:`exact_scores`
        (``loop`` and ``exact`` alike); the others refuse."""
        raise GliomatchError(
            f"strategy {self.name} gives no exact scores; the ground truth comes from one that "
            "does (exact, loop)"
        )

    def check_sample(self, ids) -> bool:
        """Re-derive this index's entries for tumors ``ids`` from the densities and compare
        (``db verify``); False when a strategy cannot (a learned code or a radiomics feature
        depends on float arithmetic that may differ by machine: its files are checked by
        checksum only)."""
        return False

    def _check_query(self, query) -> None:
        if not isinstance(query, Query):
            raise GliomatchError("search needs Query objects (use Query.from_masks(flair, t1gd))")
        if tuple(query.flair.shape) != tuple(self.db.shape):
            raise GliomatchError(
                f"query grid {query.flair.shape} differs from the database grid {self.db.shape}"
            )
        if query.affine is not None and not np.allclose(query.affine, self.db.affine, atol=1e-3):
            raise GliomatchError(
                "query masks lie on another grid than the database's (their affines differ); "
                "warp them into atlas space first (`gliomatch infer` does it for patient scans)"
            )

    def _search_batch(self, queries: list[Query], k: int):
        """``(nq, k)`` answers; strategies that can batch (one FAISS call) override it."""
        out = [self._search(q, k) for q in queries]
        return np.stack([s for s, _ in out]), np.stack([i for _, i in out])

    def _check_buildable(self) -> None:  # noqa: B027 - most indexes need only the database
        """Raise :class:`GliomatchError` when the index could not be built now (a learned
        strategy without its trained model)."""

    def _build(self, folder: Path) -> None:  # noqa: B027 - strategies without an index
        """Write the index files into ``folder`` (only when ``needs_index``), reporting with
        :meth:`_report`."""

    def _report(self, done: int, what: str) -> None:
        """Progress of an index build: ``done`` of the database's tumors."""
        report(self.progress, done, len(self.db), f"{what} ({self.name})")

    def _load(self, folder: Path) -> None:  # noqa: B027
        """Load the index files from ``folder`` (only when ``needs_index``)."""

    @abc.abstractmethod
    def _search(self, query: Query, k: int): ...


class RerankStrategy(Strategy):
    """Any strategy's ``m`` best candidates re-scored with the exact full-resolution Dice
    (like FAISS's ``IndexRefineFlat``): the exact best among those ``m``. Named
    ``NAME+rrM``."""

    needs_index = False

    def __init__(self, base: Strategy, m: int, **kw):
        if isinstance(m, bool) or not isinstance(m, int | np.integer) or m < 1:
            raise GliomatchError(f"re-ranking needs a positive candidate count, got {m!r}")
        super().__init__(base.db, w_t1gd=base.w_t1gd, w_flair=base.w_flair, **kw)
        self.base, self.m = base, int(m)
        self.name = f"{base.name}+rr{self.m}"
        self._exact = None
        # the candidates are re-scored exactly; the ranking is exact when the base's is
        self.exact_scores = True
        self.exact_ranking = base.exact_ranking

    def ensure_ready(self) -> Strategy:
        if not self._loaded:
            self.base.ensure_ready()
            get_strategy("exact", self.db).ensure_ready()
        return self.load()

    def load(self) -> Strategy:
        if not self._loaded:
            self.base.load()
            self._exact = get_strategy(
                "exact", self.db, w_t1gd=self.w_t1gd, w_flair=self.w_flair
            ).load()
            self._loaded = True
        return self

    def index_info(self) -> dict:
        """The base strategy's index and the exact index its candidates are re-scored with:
        both are held to answer; the build time is the base's."""
        base, exact = self.base.index_info(), get_strategy("exact", self.db).index_info()
        return {**base, "index_bytes": base["index_bytes"] + exact["index_bytes"]}

    def _search(self, query: Query, k: int):
        _, cand = self.base.search_one(query, max(k, min(self.m, len(self.db))))
        return top_k(self._exact.scores(query, cand)[0], np.asarray(cand, dtype=np.int64), k)

    def scores(self, query: Query, ids=None):
        """The exact scores it re-ranks with (the full-resolution block index's)."""
        self.load()
        return self._exact.scores(query, ids)


_REGISTRY: dict[str, type[Strategy]] = {}
#: Functions name -> (class, options) or None, for families of names (e.g. trained models).
_RESOLVERS: list = []


def register_resolver(fn) -> None:
    """Register ``fn(name) -> (cls, options) | None`` for strategy names not registered."""
    _RESOLVERS.append(fn)


def register_strategy(name: str, cls: type[Strategy] | None = None, **defaults):
    """Register a strategy class under ``name`` (usable as a decorator)."""

    def deco(c):
        _REGISTRY[name] = (c, defaults)
        return c

    return deco(cls) if cls is not None else deco


def available_strategies() -> list[str]:
    return sorted(_REGISTRY)


def ready_strategies(db, names=None) -> dict[str, str | None]:
    """For each registered strategy (or ``names``): None when it is ready to search ``db`` (its
    index is built if needed), else why not (e.g. an untrained model)."""
    out = {}
    for name in names or available_strategies():
        try:
            get_strategy(name, db).ensure_ready()
            out[name] = None
        except GliomatchError as exc:
            out[name] = str(exc)
    return out


def get_strategy(name: str, db, **options) -> Strategy:
    """Strategy ``name`` for ``db``; build its index with :meth:`Strategy.ensure_ready` (searching
    only loads it).

    Parameters
    ----------
    name : str
        ``loop``, ``exact``, ``ds64``, ``ds32``, a trained model (``ae``, ``vae8``, ``hash``,
        ``multitask``...), ``radiomics``, or ``NAME+rrM``: NAME re-ranking its M best
        candidates by the exact Dice (FAISS's ``IndexRefineFlat``).
    db : Database
    **options
        ``w_t1gd``, ``w_flair`` (score weights), ``progress``, and a strategy's own.

    Returns
    -------
    Strategy
        Answers ``search(queries, k) -> (scores, ids)`` of shape ``(nq, k)``; says its
        ``metric`` and whether it is exact (``exact_scores``, ``exact_ranking``).

    Examples
    --------
    >>> exact = get_strategy("exact", db)
    >>> q = Query.from_codes(db.codes(3), affine=db.affine)   # a query equal to tumor 3
    >>> scores, ids = exact.search([q], 5)
    >>> ids.shape, int(ids[0, 0]), float(scores[0, 0])
    ((1, 5), 3, 2.0)
    >>> exact.exact_scores, get_strategy("ds32+rr3", db).exact_scores
    (True, True)
    """
    if not isinstance(name, str) or not name.strip():
        raise GliomatchError("no strategy name given")
    if "+rr" in name:
        base, _, m = name.rpartition("+rr")
        if not m.isdigit() or int(m) < 1 or not base:
            raise GliomatchError(
                f"bad strategy name {name!r}: NAME+rrM re-ranks the M best of NAME, e.g. ae+rr100"
            )
        return RerankStrategy(get_strategy(base, db, **options), int(m))
    for resolve in _RESOLVERS:
        found = None if name in _REGISTRY else resolve(name)
        if found is not None:
            cls, defaults = found
            return cls(db, **{**defaults, **options})
    if name not in _REGISTRY:
        raise GliomatchError(
            f"unknown strategy {name!r}; available: {', '.join(available_strategies())}"
        )
    cls, defaults = _REGISTRY[name]
    return cls(db, **{**defaults, **options})
