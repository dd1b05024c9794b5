"""LFW / CFP-FP / AgeDB-30 style verification sets: the InsightFace ``.bin`` format and 10-fold accuracy.

A ``.bin`` is a pickle of ``(images, issame)``: ``2N`` encoded 112x112 face images (consecutive pairs) and
``N`` same/not-same flags. Pickle runs code by design, and these files are passed around the internet, so they
are read with an unpickler that resolves only the handful of globals such a file legitimately needs; any other
global (``os.system``, ``builtins.eval``, ...) aborts the load before it can be called.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from sklearn.model_selection import KFold

# (module, name) pairs a verification .bin may reference. Python-2 era files need none (bytes are opcodes);
# protocol-2 files written by Python 3 encode bytes through _codecs.encode; some tools store numpy arrays.
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("builtins", "bytearray"),
    ("__builtin__", "bytearray"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
}


class UnsafeBinError(pickle.UnpicklingError):
    """The file asks the unpickler for something a verification set never contains."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, fh: io.BufferedReader, source: Path) -> None:
        super().__init__(fh, encoding="bytes")  # Python 2 files store images as str -> read them as bytes
        self._source = source

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafeBinError(f"{self._source}: refuses to load global {module}.{name} (a verification .bin holds "
                             "only image bytes and same/not-same flags; this file may be malicious)")

    def persistent_load(self, pid: object) -> object:
        raise UnsafeBinError(f"{self._source}: persistent ids are not allowed in a verification .bin")


@dataclass(frozen=True)
class VerificationSet:
    name: str
    images: np.ndarray  # uint8 [2N, 112, 112, 3] RGB
    issame: np.ndarray  # bool [N]


def _as_bytes(item: object, source: Path, index: int) -> bytes:
    if isinstance(item, bytes | bytearray):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return item.tobytes()
    raise ValueError(f"{source}: image {index} is a {type(item).__name__}, expected encoded image bytes")


def load_bin(path: Path | str, image_size: int = 112) -> VerificationSet:
    """Load and decode a verification ``.bin``; raises a ValueError naming the file for anything malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: verification set not found")
    with path.open("rb") as fh:
        try:
            payload = _RestrictedUnpickler(fh, path).load()
        except UnsafeBinError:
            raise
        except Exception as exc:  # truncated or not a pickle at all: any unpickling failure means the same
            raise ValueError(f"{path}: not a readable verification .bin ({type(exc).__name__}: {exc})") from None
    if not (isinstance(payload, tuple | list) and len(payload) == 2):
        raise ValueError(f"{path}: expected a pickled (images, issame) pair, got {type(payload).__name__}")
    bins, issame = payload
    issame = np.asarray(list(issame))
    if issame.dtype.kind not in "bi" or not np.isin(issame, [0, 1]).all():
        raise ValueError(f"{path}: same/not-same flags must be booleans")
    if len(bins) != 2 * len(issame):
        raise ValueError(f"{path}: {len(bins)} images for {len(issame)} pairs (need two images per pair)")
    images = np.empty((len(bins), image_size, image_size, 3), np.uint8)
    for i, item in enumerate(bins):
        raw = np.frombuffer(_as_bytes(item, path, i), np.uint8)
        bgr = cv2.imdecode(raw, cv2.IMREAD_COLOR) if raw.size else None
        if bgr is None:
            raise ValueError(f"{path}: image {i} (pair {i // 2}) cannot be decoded")
        if bgr.shape[:2] != (image_size, image_size):
            bgr = cv2.resize(bgr, (image_size, image_size), interpolation=cv2.INTER_AREA)
        images[i] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return VerificationSet(path.stem, images, issame.astype(bool))


def write_bin(path: Path | str, encoded_images: list[bytes], issame: list[bool]) -> None:
    """Write the format InsightFace's tools read (a pickled tuple; highest protocol, no globals needed)."""
    with Path(path).open("wb") as fh:
        pickle.dump((encoded_images, [bool(x) for x in issame]), fh, protocol=pickle.HIGHEST_PROTOCOL)


def _best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """Threshold maximising accuracy of ``score > t`` on these pairs, exact over every cut between scores."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], same[order]
    # Accepting the top j pairs: correct = genuine among them + impostors among the rest.
    tp = np.concatenate([[0], np.cumsum(y)])
    fp = np.concatenate([[0], np.cumsum(~y)])
    correct = tp + (np.count_nonzero(~y) - fp)
    valid = np.concatenate([[True], s[:-1] != s[1:], [True]])  # a cut cannot split tied scores
    j = int(np.argmax(np.where(valid, correct, -1)))
    upper = s[j - 1] if j > 0 else s[0] + 1.0
    lower = s[j] if j < len(s) else s[-1] - 1.0
    return float((upper + lower) / 2)


def kfold_accuracy(scores: np.ndarray, issame: np.ndarray, folds: int = 10) -> tuple[float, float, float]:
    """Standard protocol: for each fold, the threshold is chosen on the other folds and applied to it.

    Returns (mean accuracy, std of fold accuracies, mean threshold). Folds are contiguous (no shuffle), as in
    the LFW protocol and InsightFace's tools, so published numbers are comparable.
    """
    issame = np.asarray(issame, bool)
    if len(scores) < folds:
        raise ValueError(f"{len(scores)} pairs cannot be split into {folds} folds")
    accuracies, thresholds = [], []
    for train, test in KFold(n_splits=folds, shuffle=False).split(scores):
        t = _best_threshold(scores[train], issame[train])
        accuracies.append(np.mean((scores[test] > t) == issame[test]))
        thresholds.append(t)
    return float(np.mean(accuracies)), float(np.std(accuracies)), float(np.mean(thresholds))
