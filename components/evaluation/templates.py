"""Image features -> template features, the IJB way: mean over each media, mean of media means, L2-normalise.

Pooling is two sparse matrix products (images -> media -> templates) whose coefficients carry the per-image
weights (detector score, optional per-image normalisation) and the 1/count means. The feature matrix is read
once and never copied, so IJB-C's 469,375 x 512 float32 features (0.9 GB, possibly a memory map) pool in about
a second with no Python loop per template.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def row_norms(features: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """L2 norm of each row, chunked so a memory-mapped file is streamed, not loaded whole."""
    out = np.empty(len(features), np.float32)
    for start in range(0, len(features), chunk):
        block = np.asarray(features[start:start + chunk], dtype=np.float32)
        out[start:start + chunk] = np.sqrt(np.einsum("ij,ij->i", block, block))
    return out


def _mean_operator(groups: np.ndarray, n_groups: int, weights: np.ndarray) -> sp.csr_matrix:
    """Sparse [n_groups, n_items] matrix averaging items into their group, each item scaled by ``weights``."""
    counts = np.bincount(groups, minlength=n_groups).astype(np.float64)
    data = weights / counts[groups]
    return sp.csr_matrix((data.astype(np.float32), (groups, np.arange(len(groups)))), shape=(n_groups, len(groups)))


def pool_templates(features: np.ndarray, templates: np.ndarray, medias: np.ndarray,
                   image_weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (sorted unique template ids, L2-normalised template features [n_templates, dim] float32).

    A media id is pooled within its template: the same video appearing in two templates contributes to each
    separately, as in the IJB protocol. ``image_weights`` multiplies each image feature before pooling.
    """
    n = len(features)
    if not (len(templates) == len(medias) == n):
        raise ValueError(f"{n} features for {len(templates)} template ids and {len(medias)} media ids")
    weights = np.ones(n, np.float64) if image_weights is None else np.asarray(image_weights, np.float64)
    unique_templates, t_index = np.unique(templates, return_inverse=True)
    # One integer key per (template, media) so a media shared by two templates forms two groups.
    _, m_index = np.unique(medias, return_inverse=True)
    n_media = int(m_index.max()) + 1
    media_key = t_index.astype(np.int64) * n_media + m_index
    unique_keys, group = np.unique(media_key, return_inverse=True)
    group_template = (unique_keys // n_media).astype(np.int64)

    to_media = _mean_operator(group, len(unique_keys), weights)
    media_feats = np.asarray(to_media @ features, dtype=np.float32)
    to_template = _mean_operator(group_template, len(unique_templates), np.ones(len(unique_keys)))
    template_feats = np.asarray(to_template @ media_feats, dtype=np.float32)
    norms = np.linalg.norm(template_feats, axis=1, keepdims=True)
    if (norms == 0).any():
        empty = unique_templates[np.flatnonzero(norms[:, 0] == 0)[0]]
        raise ValueError(f"template {empty} pools to a zero vector (all its image weights are 0)")
    return unique_templates, template_feats / norms
