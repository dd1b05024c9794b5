"""Image features -> template features, the IJB way: mean over each media, mean of media means, L2-normalise.

Pooling is two sparse products (images -> media -> templates) whose coefficients carry the per-image weights
(detector score, optional per-image normalisation) and the 1/count means, with no Python loop per template.
The image features arrive in blocks of rows (``TemplatePooler.add``), so IJB-C's 469,375 x 512 float32
features (0.9 GB) are read from their file once, block by block, and never held whole in memory.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def row_norms(features: np.ndarray) -> np.ndarray:
    """L2 norm of each row, float32."""
    block = np.asarray(features, dtype=np.float32)
    return np.sqrt(np.einsum("ij,ij->i", block, block))


class TemplatePooler:
    """Accumulates per-media weighted means from blocks of image features, then pools them into templates.

    A media id is pooled within its template: the same video appearing in two templates contributes to each
    separately, as in the IJB protocol.
    """

    def __init__(self, templates: np.ndarray, medias: np.ndarray, dim: int) -> None:
        if len(templates) != len(medias):
            raise ValueError(f"{len(templates)} template ids for {len(medias)} media ids")
        self.template_ids, t_index = np.unique(templates, return_inverse=True)
        # One integer key per (template, media) so a media shared by two templates forms two groups.
        _, m_index = np.unique(medias, return_inverse=True)
        n_media = int(m_index.max()) + 1 if len(m_index) else 1
        unique_keys, self._group = np.unique(t_index.astype(np.int64) * n_media + m_index, return_inverse=True)
        self._group_template = (unique_keys // n_media).astype(np.int64)
        self._mean_factor = 1.0 / np.bincount(self._group, minlength=len(unique_keys)).astype(np.float64)
        self._media_sums = np.zeros((len(unique_keys), dim), np.float32)

    def add(self, start: int, block: np.ndarray, weights: np.ndarray) -> None:
        """Images ``start .. start+len(block)`` with their per-image weights (float64)."""
        group = self._group[start:start + len(block)]
        present, local = np.unique(group, return_inverse=True)
        coeff = (weights * self._mean_factor[group]).astype(np.float32)
        to_media = sp.csr_matrix((coeff, (local, np.arange(len(block)))), shape=(len(present), len(block)))
        self._media_sums[present] += to_media @ np.asarray(block, dtype=np.float32)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted unique template ids, L2-normalised template features [n_templates, dim] float32)."""
        counts = np.bincount(self._group_template, minlength=len(self.template_ids)).astype(np.float64)
        to_template = sp.csr_matrix(((1.0 / counts[self._group_template]).astype(np.float32),
                                     (self._group_template, np.arange(len(self._group_template)))),
                                    shape=(len(self.template_ids), len(self._group_template)))
        feats = np.asarray(to_template @ self._media_sums, dtype=np.float32)
        norms = np.linalg.norm(feats, axis=1, keepdims=True)
        if (norms == 0).any():
            empty = self.template_ids[np.flatnonzero(norms[:, 0] == 0)[0]]
            raise ValueError(f"template {empty} pools to a zero vector (all its image weights are 0)")
        return self.template_ids, feats / norms


def pool_templates(features: np.ndarray, templates: np.ndarray, medias: np.ndarray,
                   image_weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All features at once: (sorted unique template ids, L2-normalised template features)."""
    if len(features) != len(templates):
        raise ValueError(f"{len(features)} features for {len(templates)} template ids")
    pooler = TemplatePooler(templates, medias, features.shape[1])
    weights = np.ones(len(features)) if image_weights is None else np.asarray(image_weights, np.float64)
    pooler.add(0, features, weights)
    return pooler.result()
