"""``multitask``: nearest tumors in the multitask-learned RoI embedding, searched with FAISS.

The database is embedded once (both masks as the network's two input channels, RoI max pooling
over each tumor's FLAIR bounding box) and indexed with a FAISS ``IndexFlatL2``; a query is
embedded the same way. Any trained multitask model name (``multitask-size-noseg``...) is a
strategy too, and ``multitask+rrM`` re-ranks the M nearest by exact Dice like the other learned
codes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from gliomatch.search.base import Query, Strategy, register_resolver, register_strategy
from gliomatch.search.learned import LearnedStrategy, tumor_masks

__all__ = ["MultitaskStrategy"]


@register_strategy("multitask", model="multitask")
class MultitaskStrategy(LearnedStrategy):
    """Euclidean nearest neighbours of the 64-D RoI-pooled embedding."""

    def _meta(self):
        from gliomatch.learn.multitask import multitask_dir

        p = multitask_dir(self.db, self.model_name) / "model.pt"
        stamp = p.stat().st_mtime_ns if p.is_file() else None
        return {**Strategy._meta(self), "model": stamp}

    def _model(self):
        from gliomatch.learn.multitask import load_multitask, model_atlas

        model, _ = load_multitask(self.db, self.model_name)
        return model, model_atlas(self.db, model)

    def _check_buildable(self) -> None:
        self._model()

    def _build(self, folder: Path) -> None:
        from gliomatch.learn.multitask import embed_masks, tumor_boxes

        model, atlas = self._model()
        masks = tumor_masks(self.db, model.resolution, self.progress)
        out = []
        for start in range(0, len(self.db), 64):
            ids = np.arange(start, min(start + 64, len(self.db)))
            x = np.stack([masks(ids, "flair"), masks(ids, "t1gd")], axis=1)
            out.append(embed_masks(model, x, tumor_boxes(self.db, ids, model.resolution), atlas))
            self._report(ids[-1] + 1, "embedding the database")
        np.save(folder / "embeddings.npy", np.concatenate(out))
        (folder / "codes.json").write_text(json.dumps({"resolution": model.resolution}))

    def _load(self, folder: Path) -> None:
        import faiss

        self.model, self.atlas = self._model()
        emb = np.ascontiguousarray(np.load(folder / "embeddings.npy"), dtype=np.float32)
        self.index = faiss.IndexFlatL2(emb.shape[1])
        self.index.add(emb)

    def embed_queries(self, queries: list[Query]) -> np.ndarray:
        """Embeddings ``(nq, 64)`` of a batch of queries, each through the network alone (its
        answer does not depend on the queries searched with it)."""
        from gliomatch.learn.multitask import embed_masks, query_arrays

        parts = [query_arrays(q.flair, q.t1gd, self.model.resolution) for q in queries]
        masks = np.concatenate([m for m, _ in parts])
        boxes = np.concatenate([b for _, b in parts])
        return embed_masks(self.model, masks, boxes, self.atlas, batch=1)

    def distances(self, queries: list[Query]) -> np.ndarray:
        n, nq = len(self.db), len(queries)
        d, i = self.index.search(self.embed_queries(queries), n)
        out = np.empty((nq, n))
        out[np.arange(nq)[:, None], i] = np.sqrt(np.maximum(d, 0))
        return out


def _resolve(name: str):
    if re.fullmatch(r"multitask(-[a-z]+)+", name):
        return MultitaskStrategy, {"model": name}
    return None


register_resolver(_resolve)
