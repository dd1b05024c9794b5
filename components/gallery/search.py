"""Top-k identities for a probe among one model version's templates.

Embeddings are L2-normalised, so the inner product is the cosine. An identity's score is its best template's.
- :class:`Templates`, exact (the default): one matrix-vector product over the version's templates, then the top
  rows by ``argpartition``; identities are read off the best rows, which is exact (an identity absent from the
  best m rows scores below all of them), and m doubles until k identities are found.
- :class:`IndexedTemplates`, from ``gallery.index_from`` templates on: FAISS's inverted file with 8-bit scalar
  quantisation (IVF-SQ8). An exact float32 scan of 10^6 x 512 templates holds 2 GB and reads all of it per
  probe; the index holds one byte per dimension and reads the ``nprobe`` lists nearest the probe, and its
  best candidates are rescored with their exact vectors read by key from the database (a few dozen rows);
  bench/gallery_identify.py measures how often it finds the exact top-1, and the latency, at 10^4 to 10^6.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np


def embedding_matrix(blobs: Sequence[bytes]) -> np.ndarray:
    """float32 [N, D] from the database's embedding blobs (one copy: the join)."""
    return np.frombuffer(b"".join(blobs), np.float32).reshape(len(blobs), -1)


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
        matrix = embedding_matrix(embeddings) if embeddings else np.zeros((0, dim), np.float32)
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
            if len(np.unique(self.rows[best])) >= k or m == len(scores):
                return _identities_of(self.rows[best], scores[best], self.identities, k)
            m = min(len(scores), 2 * m)

    def best_of(self, identity: str, probe: np.ndarray) -> float | None:
        """The best score of ``identity``'s templates (None when it has none of this version)."""
        if identity not in self.identities:
            return None
        mine = self.rows == self.identities.index(identity)
        return float(np.max(self.matrix[mine] @ probe.astype(np.float32))) if mine.any() else None


def _identities_of(rows: np.ndarray, scores: np.ndarray, identities: list[str], k: int) -> list[tuple[str, float]]:
    """The first ``k`` distinct identities of ``rows`` (sorted best first), with their scores."""
    _, first = np.unique(rows, return_index=True)
    picked = np.sort(first)[:k]
    return [(identities[rows[i]], float(scores[i])) for i in picked]


@dataclass
class IndexedTemplates:
    """A version's templates in a FAISS IVF-SQ8 index; built in chunks, so no float32 copy of them all exists.

    The index proposes candidates; ``exact`` (the templates' own float32 vectors by key, read from the database)
    rescores them, so the scores answered are exact and near-equal candidates are ordered right."""

    index: object
    rows: np.ndarray  # [N] int32: each indexed template's identity
    identities: list[str]
    keys: np.ndarray  # [N] int64: each indexed template's key for ``exact`` (the face id)
    exact: Callable[[np.ndarray], np.ndarray] | None = None

    @classmethod
    def train(cls, sample: np.ndarray, total: int, nprobe: int | None = None) -> IndexedTemplates:
        """An empty index whose coarse lists (about 4 sqrt(N)) are learnt from ``sample`` (float32 [S, D])."""
        import faiss

        nlist = max(16, min(len(sample) // 39, int(4 * np.sqrt(total))))  # FAISS wants >= 39 points a list
        index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(sample.shape[1]), sample.shape[1], nlist,
                                              faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        index.by_residual = False  # codes of the vectors themselves: no per-list term to add at search time
        index.train(np.ascontiguousarray(sample, np.float32))
        # a sixteenth of the lists: enrolled people's probes find their exact top-1 (>= 99% at 10^4-10^6 in
        # bench/gallery_identify); a stranger's top-1 among near-equal scores may differ, not its decision
        index.nprobe = nprobe or max(16, nlist // 16)
        return cls(index, np.zeros(0, np.int32), [], np.zeros(0, np.int64))

    def add(self, chunks: Iterable[tuple[np.ndarray, list[str], np.ndarray]],
            exact: Callable[[np.ndarray], np.ndarray] | None = None) -> IndexedTemplates:
        """Add (embeddings [n, D], identity names, keys [n]) chunks; identities are numbered once all are in.
        ``exact(keys)``: those templates' float32 vectors, to rescore candidates (None: quantised scores)."""
        names: list[str] = []
        keys: list[np.ndarray] = []
        for embeddings, chunk_names, chunk_keys in chunks:
            self.index.add(np.ascontiguousarray(embeddings, np.float32))  # type: ignore[attr-defined]
            names += chunk_names
            keys.append(np.asarray(chunk_keys, np.int64))
        self.keys, self.exact = (np.concatenate(keys) if keys else np.zeros(0, np.int64)), exact
        self.identities = sorted(set(names))
        position = {name: i for i, name in enumerate(self.identities)}
        self.rows = np.fromiter((position[n] for n in names), np.int32, len(names))
        self.index.make_direct_map()  # type: ignore[attr-defined]  # verify reads an identity's own templates
        return self

    def __len__(self) -> int:
        return len(self.rows)

    def top(self, probe: np.ndarray, k: int) -> list[tuple[str, float]]:
        if not len(self.rows):
            return []
        k = min(k, len(self.identities))
        m = max(8 * k, 32)
        while True:
            scores, ids = self.index.search(probe.astype(np.float32)[None], m)  # type: ignore[attr-defined]
            found = ids[0][ids[0] >= 0]
            scores = scores[0][ids[0] >= 0]
            if self.exact is not None and len(found):
                scores = self.exact(self.keys[found]) @ probe.astype(np.float32)
                order = np.argsort(-scores, kind="stable")
                found, scores = found[order], scores[order]
            rows = self.rows[found]
            if len(np.unique(rows)) >= k or m >= len(self.rows):
                return _identities_of(rows, scores, self.identities, k)
            m *= 2

    def best_of(self, identity: str, probe: np.ndarray) -> float | None:
        """Verification is 1:1: the identity's own templates, reconstructed from the index (quantised)."""
        if identity not in self.identities:
            return None
        wanted = np.flatnonzero(self.rows == self.identities.index(identity))
        vectors = self.exact(self.keys[wanted]) if self.exact is not None else \
            np.stack([self.index.reconstruct(int(i)) for i in wanted])  # type: ignore[attr-defined]
        return float(np.max(vectors @ probe.astype(np.float32)))
