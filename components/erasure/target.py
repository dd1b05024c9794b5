"""The person to forget, as the stores know them: their identity folder, their photos' and crops' SHA-256.

A stored object holds their face when it *is* one of their photos or crops (its SHA-256), when it lists them
(a table or text naming their photos' or crops' SHA-256 or a file of their folder, or a table whose
``identity`` column names them), or when it
packs their crops (a RecordIO record whose image is one of their crops: ``pack`` stores the aligned JPEG as it
is). Names are matched as whole path components or table cells, so forgetting ``ann``
leaves ``anna`` alone, and a person called ``train`` leaves the reports."""

from __future__ import annotations

import hashlib
import io
import re
import struct
from dataclasses import dataclass, field

from components.recordio.format import MAGIC as RECORDIO_MAGIC
from components.recordio.format import scan_records, unpack_header

PARQUET_MAGIC = b"PAR1"
TEXT_LIMIT = 64 << 20  # a text larger than this is not one of faceforge's tables or reports


@dataclass
class Target:
    identity: str
    photos: set[str] = field(default_factory=set)  # SHA-256 (hex) of their raw photos
    crops: set[str] = field(default_factory=set)  # SHA-256 (hex) of their aligned crops, every version seen

    @property
    def digests(self) -> set[str]:
        return self.photos | self.crops

    def names_them(self, text: str) -> bool:
        """One of their photos' or crops' SHA-256 (or the 20-character prefix that names a crop file), or a
        file in their folder (``<identity>/<name>``), in ``text``. Their name alone counts only where a table
        says it is an identity (:meth:`lists_them`): a person called ``train`` must not take every report
        with them."""
        if any(digest in text or digest[:20] in text for digest in self.digests):
            return True
        return re.search(rf"(?<![\w.-]){re.escape(self.identity)}/[^/\s\"',]+", text) is not None

    def lists_them(self, columns: dict[str, list[str]]) -> bool:
        """A table (column name -> string values) that names them in its ``identity`` column or elsewhere."""
        if self.identity in columns.get("identity", ()):
            return True
        return any(self.names_them("\n".join(values)) for values in columns.values())

    def owns_path(self, relpath: str) -> bool:
        """A file inside their identity folder (``<identity>/<file>``), as DVC's directory listings name it."""
        return relpath.split("/", 1)[0] == self.identity

    def holds(self, data: bytes) -> bool:
        """Whether these bytes are, list or pack one of their faces (see the module's docstring)."""
        if hashlib.sha256(data).hexdigest() in self.digests:
            return True
        if data[:4] == PARQUET_MAGIC:
            return self.lists_them(_parquet_strings(data))
        if len(data) >= 8 and struct.unpack_from("<I", data)[0] == RECORDIO_MAGIC:
            return any(hashlib.sha256(image).hexdigest() in self.crops for image in _record_images(data))
        if len(data) <= TEXT_LIMIT:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                return False
            return self.names_them(text) or self.lists_them(_csv_strings(text))
        return False


def _parquet_strings(data: bytes) -> dict[str, list[str]]:
    """Every string column of a Parquet table, by name."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    return {name: [v for v in column.to_pylist() if v is not None]
            for name, column in zip(table.column_names, table.columns, strict=True)
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type)}


def _csv_strings(text: str) -> dict[str, list[str]]:
    """A CSV text's columns by header name (``identities.csv``, ``rejected.csv``); nothing for other texts."""
    import csv

    lines = text.splitlines()
    if not lines or "," not in lines[0]:
        return {}
    try:
        rows = list(csv.DictReader(lines))
    except csv.Error:
        return {}
    return {name: [row.get(name) or "" for row in rows] for name in (rows[0].keys() if rows else []) if name}


def _record_images(data: bytes) -> list[bytes]:
    """The image payloads of a RecordIO file in memory (InsightFace's layout: IRHeader, then the JPEG; its
    first record, the header of the set, has none)."""
    payloads = (unpack_header(record)[1] for record in scan_records(data, "a stored RecordIO object"))
    return [bytes(payload) for payload in payloads if len(payload)]
