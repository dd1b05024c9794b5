"""Read the IJB-B/IJB-C protocol files in the layout InsightFace users already have on disk.

```
<root>/meta/<target>_face_tid_mid.txt        image template_id media_id           (one line per image)
<root>/meta/<target>_name_5pts_score.txt     image x1 y1 ... x5 y5 score         (same images, same order)
<root>/meta/<target>_template_pair_label.txt template_1 template_2 label         (1:1 verification)
<root>/meta/<target>_1N_gallery_G1.csv       TEMPLATE_ID,SUBJECT_ID,...           (1:N, header line, optional)
<root>/meta/<target>_1N_gallery_G2.csv
<root>/meta/<target>_1N_probe_mixed.csv
<root>/loose_crop/<image>
```

The 1:1 pair file has 15.6 M lines for IJB-C, so the space-separated files are parsed with pyarrow's
multithreaded CSV reader; a malformed file is then re-scanned line by line only to name the bad line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv


class ProtocolError(ValueError):
    """A protocol file the user must fix; the message names the file and the line."""


@dataclass(frozen=True)
class IjbcMeta:
    """Per-image arrays share one order: the order of ``<target>_name_5pts_score.txt``."""

    root: Path
    target: str
    images: np.ndarray  # str, relative to loose_crop/
    templates: np.ndarray  # int64 per image
    medias: np.ndarray  # int64 per image
    landmarks: np.ndarray  # float32 [n, 5, 2]
    scores: np.ndarray  # float32 detector scores
    template_ids: np.ndarray  # sorted unique template ids: the row order of pooled template features
    pair_index: tuple[np.ndarray, np.ndarray]  # each pair's two templates as positions in template_ids
    pair_label: np.ndarray  # bool
    galleries: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # name -> (templates, subjects)
    probes: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def image_dir(self) -> Path:
        return self.root / "loose_crop"

    def meta_path(self, suffix: str) -> Path:
        return self.root / "meta" / f"{self.target}_{suffix}"


def _bad_line(path: Path, n_cols: int, kinds: str, delimiter: str, skip: int) -> str:
    """Find the first line that does not match ``kinds`` (s = string, i = int, f = float) for the error message."""
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            if number <= skip or not line.strip():
                continue
            cells = line.rstrip("\n").split(delimiter)
            if len(cells) < n_cols:
                return f"{path}:{number}: expected {n_cols} fields, got {len(cells)}: {line.strip()[:80]!r}"
            for cell, kind in zip(cells, kinds, strict=False):
                try:
                    int(cell) if kind == "i" else float(cell) if kind == "f" else None
                except ValueError:
                    return f"{path}:{number}: {cell!r} is not {'an integer' if kind == 'i' else 'a number'}"
    return f"{path}: could not be parsed"


def _read_columns(path: Path, kinds: str, delimiter: str = " ", header: bool = False,
                  integers: str = "int64") -> list[np.ndarray]:
    """Parse the first ``len(kinds)`` columns of a delimited text file into numpy arrays; a ``-`` column is
    skipped (not converted, not returned), ``i`` columns are parsed as ``integers``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: protocol file not found")
    types = {"s": pa.string(), "i": pa.type_for_alias(integers), "f": pa.float64()}
    all_kinds = kinds
    names = [f"c{i}" for i, kind in enumerate(kinds) if kind != "-"]
    kinds = kinds.replace("-", "")
    try:
        with path.open("rb") as fh:
            first = fh.readline().decode("utf-8", errors="replace")
        width = len(first.rstrip("\n").split(delimiter))
        all_names = [f"c{i}" for i in range(len(all_kinds))]
        all_names += [f"extra{i}" for i in range(max(0, width - len(all_names)))]
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=all_names, skip_rows=1 if header else 0),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(
                column_types={n: types[k] for n, k in zip(names, kinds, strict=True)}, include_columns=names),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError):
        raise ProtocolError(_bad_line(path, len(all_kinds), all_kinds, delimiter, 1 if header else 0)) from None
    if table.num_rows == 0:
        raise ProtocolError(f"{path}: no rows")
    columns = []
    for name in names:
        col = table.column(name)
        if col.null_count:
            row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise ProtocolError(f"{path}:{row + 1 + header}: missing field {name[1:]}")
        columns.append(col.to_numpy())
    return columns


LOOKUP_LIMIT = 1 << 26  # id range up to which positions come from a lookup table (int32: 256 MB at most)


def index_in(values: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``values`` in the sorted unique array ``known`` and a mask of values not in it.

    Template ids span a small range (IJB-C's are below 200,000), so a table indexed by id gives each of the
    15.6 M pair ids its position in one gather, ~30x faster than a binary search per id; ids spread wider
    fall back to the binary search.
    """
    if len(known) and len(values) and int(known[-1]) - int(known[0]) < LOOKUP_LIMIT:
        low, high = int(known[0]), int(known[-1])
        table = np.full(high - low + 1, -1, np.int32)
        table[known - low] = np.arange(len(known), dtype=np.int32)
        if int(values.min()) >= low and int(values.max()) <= high:  # the usual case: every id in range
            idx = table[values - values.dtype.type(low)]
        else:
            offset = values.astype(np.int64) - low
            idx = np.where((offset >= 0) & (offset <= high - low), table[np.clip(offset, 0, high - low)], -1)
        missing = idx < 0
        return np.where(missing, 0, idx) if missing.any() else idx, missing
    idx = np.clip(np.searchsorted(known, values), 0, len(known) - 1)
    return idx, known[idx] != values


def _line(index: int, header: bool = False) -> int:
    return int(index) + 1 + int(header)


def _read_subject_file(path: Path, known_templates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique (template, subject) pairs of a 1:N gallery/probe CSV (one row per image, header line)."""
    templates, subjects = _read_columns(path, "ii", delimiter=",", header=True)
    unknown = np.flatnonzero(index_in(templates, known_templates)[1])
    if unknown.size:
        i = unknown[0]
        raise ProtocolError(f"{path}:{_line(i, True)}: template {templates[i]} has no images in face_tid_mid.txt")
    uniq, first, inverse = np.unique(templates, return_index=True, return_inverse=True)
    clash = np.flatnonzero(subjects != subjects[first][inverse])
    if clash.size:
        i = clash[0]
        raise ProtocolError(f"{path}:{_line(i, True)}: template {templates[i]} is listed with two subjects")
    return uniq, subjects[first]


def read_ijbc_meta(root: Path | str, target: str = "ijbc", need_images: bool = True) -> IjbcMeta:
    """Read and cross-check every protocol file; 1:N files are optional and read when all three exist.

    ``need_images=False`` skips the landmark file (precomputed features need only its image order),
    but the image names are still taken from it when it exists.
    """
    root = Path(root)
    meta = root / "meta"
    if not meta.is_dir():
        raise FileNotFoundError(f"{meta}: no meta/ folder (expected the InsightFace IJB layout)")
    tid_path = meta / f"{target}_face_tid_mid.txt"
    names_a, templates, medias = _read_columns(tid_path, "sii")

    lmk_path = meta / f"{target}_name_5pts_score.txt"
    if need_images or lmk_path.is_file():
        if need_images:
            cols = _read_columns(lmk_path, "s" + "f" * 11)
            landmarks = np.stack(cols[1:11], axis=1).astype(np.float32).reshape(-1, 5, 2)
        else:  # features given: only the image order and the detector scores are used
            cols = _read_columns(lmk_path, "s" + "-" * 10 + "f")
            landmarks = np.full((len(cols[0]), 5, 2), np.nan, np.float32)
        names, scores = cols[0], cols[-1].astype(np.float32)
        if len(names) != len(names_a):
            raise ProtocolError(f"{lmk_path}: {len(names)} images, but {tid_path} lists {len(names_a)}")
        mismatch = np.flatnonzero(names != names_a)
        if mismatch.size:
            i = mismatch[0]
            raise ProtocolError(f"{lmk_path}:{_line(i)}: image {names[i]!r}, but line {_line(i)} of "
                                f"{tid_path.name} is {names_a[i]!r} (the two files must list images in one order)")
        bad = np.flatnonzero(~np.isfinite(scores) | (~np.isfinite(landmarks).all(axis=(1, 2)) & need_images))
        if bad.size:
            raise ProtocolError(f"{lmk_path}:{_line(bad[0])}: landmark or score is not a finite number")
    else:
        names = names_a
        landmarks = np.full((len(names), 5, 2), np.nan, np.float32)
        scores = np.ones(len(names), np.float32)

    pair_path = meta / f"{target}_template_pair_label.txt"
    t1, t2, label = _read_columns(pair_path, "iii", integers="int32")  # 15.6 M lines: half the bytes
    known = np.unique(templates)
    pair_index = []
    for column in (t1, t2):  # one binary search per id both validates it and locates its template row
        position, missing = index_in(column, known)
        unknown = np.flatnonzero(missing)
        if unknown.size:
            i = unknown[0]
            raise ProtocolError(f"{pair_path}:{_line(i)}: template {column[i]} has no images in {tid_path.name}")
        pair_index.append(position.astype(np.int32))
    bad_label = np.flatnonzero((label != 0) & (label != 1))
    if bad_label.size:
        i = bad_label[0]
        raise ProtocolError(f"{pair_path}:{_line(i)}: label must be 0 or 1, got {label[i]}")
    if label.all() or not label.any():
        raise ProtocolError(f"{pair_path}: needs both genuine (1) and impostor (0) pairs")

    one_n = [meta / f"{target}_1N_gallery_G1.csv", meta / f"{target}_1N_gallery_G2.csv",
             meta / f"{target}_1N_probe_mixed.csv"]
    galleries: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    probes = None
    if all(p.is_file() for p in one_n):
        galleries = {"G1": _read_subject_file(one_n[0], known), "G2": _read_subject_file(one_n[1], known)}
        probes = _read_subject_file(one_n[2], known)
    return IjbcMeta(root=root, target=target, images=names, templates=templates, medias=medias,
                    landmarks=landmarks, scores=scores, template_ids=known,
                    pair_index=(pair_index[0], pair_index[1]), pair_label=label.astype(bool),
                    galleries=galleries, probes=probes)
