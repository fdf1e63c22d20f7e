"""Learned-code strategies searched with FAISS: ``ae``, ``vae8``, ``vae1024``, ``hash``.

The database is encoded once (both modalities, batched); the query's masks are encoded the same
way at search time.

* Latent codes: the papers' combined distance ``L2_T1Gd + L2_FLAIR`` (a sum of two Euclidean
  distances, not of their squares) is reproduced exactly: a FAISS ``IndexFlatL2`` per modality
  gives every tumor's squared distance, and the square roots are added.
* Hash codes: ``Hamming_T1Gd + Hamming_FLAIR`` is the Hamming distance of the concatenated codes,
  so one ``IndexBinaryFlat`` answers it directly.

``NAME+rrM`` (beyond the papers; :class:`~gliomatch.search.base.RerankStrategy`) re-scores
the M nearest codes with the exact full-resolution Dice of the block index, so the answer is the
exact best among those M.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from gliomatch.errors import require_extra
from gliomatch.masks import downsample
from gliomatch.search.base import Query, Strategy, register_resolver, register_strategy, top_k

__all__ = ["LearnedStrategy"]


@register_strategy("ae", model="ae")
@register_strategy("vae8", model="vae8")
@register_strategy("vae1024", model="vae1024")
@register_strategy("hash", model="hash")
class LearnedStrategy(Strategy):
    """Nearest codes of a trained model pair (T1Gd and FLAIR)."""

    compressed = True
    metric = "distance"  # the papers' L2_T1Gd + L2_FLAIR, or Hamming of the two codes

    def __init__(self, db, *, model: str = "ae", **kw):
        require_extra("learn", f"the {model} search strategy")
        self.model_name = model
        self.name = model
        super().__init__(db, **kw)

    def _meta(self):
        from gliomatch.learn.train import model_dir

        stamps = []
        for m in ("t1gd", "flair"):
            p = model_dir(self.db, self.model_name, m) / "model.pt"
            stamps.append(p.stat().st_mtime_ns if p.is_file() else None)
        return {**super()._meta(), "models": stamps}

    def _models(self):
        from gliomatch.learn.train import load_model

        return {m: load_model(self.db, self.model_name, m) for m in ("t1gd", "flair")}

    def _check_buildable(self) -> None:
        self._models()

    def _build(self, folder: Path) -> None:
        from gliomatch.learn.train import encode_masks

        models = self._models()
        res = models["t1gd"].resolution
        masks = tumor_masks(self.db, res, self.progress)
        codes = {m: [] for m in models}
        for start in range(0, len(self.db), 64):
            ids = np.arange(start, min(start + 64, len(self.db)))
            for m, model in models.items():
                codes[m].append(encode_masks(model, masks(ids, m)))
            self._report(ids[-1] + 1, "encoding the database")
        for m in models:
            np.save(folder / f"codes_{m}.npy", np.concatenate(codes[m]))
        (folder / "codes.json").write_text(
            json.dumps({"kind": models["t1gd"].kind, "resolution": res})
        )

    def _load(self, folder: Path) -> None:
        import faiss

        self.models = self._models()
        info = json.loads((folder / "codes.json").read_text())
        self.kind, self.resolution = info["kind"], info["resolution"]
        c = {m: np.load(folder / f"codes_{m}.npy") for m in ("t1gd", "flair")}
        if self.kind == "hash":
            bits = np.concatenate([c["t1gd"] > 0, c["flair"] > 0], axis=1)
            self.index = faiss.IndexBinaryFlat(bits.shape[1])
            self.index.add(np.packbits(bits, axis=1))
        else:
            self.indexes = {}
            for m, x in c.items():
                idx = faiss.IndexFlatL2(x.shape[1])
                idx.add(np.ascontiguousarray(x, dtype=np.float32))
                self.indexes[m] = idx

    def encode_queries(self, queries: list[Query]) -> dict:
        """Codes ``{modality: (nq, size)}`` of a batch of queries.

        Each query goes through the network alone: a convolution's round-off depends on the
        batch it runs in, and a hash bit at its threshold would flip with it, so a query's
        answer would depend on the queries searched with it."""
        from gliomatch.learn.train import encode_masks

        out = {}
        for m in ("t1gd", "flair"):
            x = np.stack([downsample(getattr(q, m), self.resolution) for q in queries])
            out[m] = encode_masks(self.models[m], x.astype(np.uint8), batch=1)
        return out

    def distances(self, queries: list[Query]) -> np.ndarray:
        """The combined code distance ``(nq, n)`` of every database tumor to each query."""
        q = self.encode_queries(queries)
        n, nq = len(self.db), len(queries)
        rows = np.arange(nq)[:, None]
        if self.kind == "hash":
            bits = np.concatenate([q["t1gd"] > 0, q["flair"] > 0], axis=1)
            d, i = self.index.search(np.packbits(bits, axis=1), n)
            out = np.empty((nq, n))
            out[rows, i] = d
            return out
        total = np.zeros((nq, n))
        for m, idx in self.indexes.items():
            d, i = idx.search(np.ascontiguousarray(q[m], dtype=np.float32), n)
            total[rows, i] += np.sqrt(np.maximum(d, 0))
        return total

    def _search(self, query: Query, k: int):
        scores, ids = self._search_batch([query], k)
        return scores[0], ids[0]

    def _search_batch(self, queries: list[Query], k: int):
        """Nearest codes of every query in one batched encoding and FAISS search."""
        dist = self.distances(queries)
        ids = np.arange(dist.shape[1])
        best = [top_k(-row, ids, k) for row in dist]  # nearest first, ties by id
        return np.stack([-s for s, _ in best]), np.stack([i for _, i in best])


def tumor_masks(db, resolution: int, progress=None):
    """``masks(ids, modality)`` -> uint8 (n, R, R, R): the database's masks at a model's input
    resolution, from the database's mask cache (built on first use: one pass over the
    densities shared by every model of that resolution), or read directly at full size."""
    if resolution >= db.resolution:
        from gliomatch.learn.train import masks_at

        return lambda ids, m: masks_at(db, ids, m, resolution)
    from gliomatch.database.downsampled import mask_cache

    return mask_cache(db, resolution, progress).masks


def _resolve(name: str):
    """Any trained model name (``ae16``, ``vae32``, ``hash128``...) is a strategy too."""
    if re.fullmatch(r"(ae|vae|hash)\d*", name):
        return LearnedStrategy, {"model": name}
    return None


register_resolver(_resolve)
