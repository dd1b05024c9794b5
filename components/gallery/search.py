"""Top-k identities for a probe among one model version's templates: exact inner-product search.

Embeddings are L2-normalised, so the inner product is the cosine. An identity's score is its best template's.
Exact by default: one matrix-vector product over the version's templates, then the top rows by
``argpartition``; identities are read off the best rows, which is exact (an identity absent from the best m
rows scores below all of them), and m doubles until k identities are found. docs/gallery.md gives the sizes
where an index pays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Templates:
    """One model version's templates in memory: a float32 matrix, each row's identity (an index into
    ``identities``)."""

    matrix: np.ndarray  # [N, D] float32
    rows: np.ndarray  # [N] int32
    identities: list[str]

    @classmethod
    def build(cls, embeddings: list[bytes], names: list[str], dim: int) -> Templates:
        identities = sorted(set(names))
        position = {name: i for i, name in enumerate(identities)}
        matrix = np.frombuffer(b"".join(embeddings), np.float32).reshape(len(embeddings), dim) if embeddings \
            else np.zeros((0, dim), np.float32)
        return cls(matrix, np.array([position[n] for n in names], np.int32), identities)

    def __len__(self) -> int:
        return len(self.rows)

    def top(self, probe: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The ``k`` best identities with their best scores, best first (exact)."""
        if not len(self.rows):
            return []
        scores = self.matrix @ probe.astype(np.float32)
        k = min(k, len(self.identities))
        m = min(len(scores), max(4 * k, 32))
        while True:
            best = np.argpartition(-scores, m - 1)[:m] if m < len(scores) else np.arange(len(scores))
            best = best[np.argsort(-scores[best], kind="stable")]
            _, first = np.unique(self.rows[best], return_index=True)
            if len(first) >= k or m == len(scores):
                picked = best[np.sort(first)[:k]]
                return [(self.identities[self.rows[i]], float(scores[i])) for i in picked]
            m = min(len(scores), 2 * m)

    def best_of(self, identity: str, probe: np.ndarray) -> float | None:
        """The best score of ``identity``'s templates (None when it has none of this version)."""
        if identity not in self.identities:
            return None
        mine = self.rows == self.identities.index(identity)
        return float(np.max(self.matrix[mine] @ probe.astype(np.float32))) if mine.any() else None
