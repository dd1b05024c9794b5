"""RecordIO checked against the format's specification with records the test writes byte by byte."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from components.recordio.dataset import FaceRecordDataset
from components.recordio.format import RecordIOError, RecordReader, RecordWriter, unpack_header
from components.recordio.insightface import write_face_dataset

MAGIC = struct.pack("<I", 0xCED7230A)


def spec_record(cflag: int, body: bytes) -> bytes:
    """One physical record exactly as dmlc-core lays it out: magic, lrec, body, zero pad to 4 bytes."""
    return MAGIC + struct.pack("<I", (cflag << 29) | len(body)) + body + b"\0" * (-len(body) % 4)


def ir_header(flag: int, label: float, id_: int, id2: int = 0) -> bytes:
    return struct.pack("<IfQQ", flag, label, id_, id2)


def face_jpeg(value: int) -> bytes:
    img = np.full((112, 112, 3), value, np.uint8)
    img[:, :56, 0] = 255  # red left half: flips and colour order are visible
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def write_ms1m_style(root: Path) -> None:
    """An MS1MV3-shaped dataset written without our writer: 2 classes, 3 images, class-range header."""
    images = [(0, face_jpeg(10)), (0, face_jpeg(20)), (1, face_jpeg(30))]
    records = {0: ir_header(2, 0.0, 0) + struct.pack("<2f", 4, 6)}
    for key, (label, jpg) in enumerate(images, start=1):
        records[key] = ir_header(0, float(label), key) + jpg
    records[4] = ir_header(2, 0.0, 4) + struct.pack("<2f", 1, 3)
    records[5] = ir_header(2, 0.0, 5) + struct.pack("<2f", 3, 4)
    rec, idx = bytearray(), []
    for key, payload in records.items():
        idx.append(f"{key}\t{len(rec)}")
        rec += spec_record(0, payload)
    (root / "train.rec").write_bytes(bytes(rec))
    (root / "train.idx").write_text("\n".join(idx) + "\n")
    (root / "property").write_text("2,112,112\n")


def test_reads_an_insightface_dataset_written_by_the_spec(tmp_path: Path) -> None:
    write_ms1m_style(tmp_path)
    ds = FaceRecordDataset(tmp_path, random_flip=False)
    assert len(ds) == 3
    assert [ds.read(i)[1] for i in range(3)] == [0, 0, 1]
    rgb, _ = ds.read(0)
    assert rgb[50, 10, 0] > 240 and rgb[50, 100, 0] < 40  # RGB order, red on the left
    tensor, label = ds[2]
    assert tensor.shape == (3, 112, 112) and tensor.dtype == torch.float32 and label == 1
    assert -1.0 <= float(tensor.min()) and float(tensor.max()) <= 1.0


def test_split_records_are_reassembled(tmp_path: Path) -> None:
    # A payload with the magic word at aligned offsets 4 and 12 is stored as 3 parts (flags 1, 2, 3).
    payload = b"ABCD" + MAGIC + b"EFGH" + MAGIC + b"tail!"
    (tmp_path / "x.rec").write_bytes(spec_record(1, b"ABCD") + spec_record(2, b"EFGH") + spec_record(3, b"tail!"))
    (tmp_path / "x.idx").write_text("7\t0\n")
    assert RecordReader(tmp_path / "x.rec", tmp_path / "x.idx").read(7) == payload


def test_writer_matches_the_spec_byte_for_byte() -> None:
    rec, idx = io.BytesIO(), io.BytesIO()
    writer = RecordWriter(rec, idx)
    writer.write(0, b"hello")
    writer.write(1, b"ABCD" + MAGIC + b"EFGH" + MAGIC + b"tail!")
    writer.write(2, b"xy" + MAGIC + b"z")  # unaligned magic: not split
    expected_0 = spec_record(0, b"hello")
    expected_1 = spec_record(1, b"ABCD") + spec_record(2, b"EFGH") + spec_record(3, b"tail!")
    expected_2 = spec_record(0, b"xy" + MAGIC + b"z")
    assert rec.getvalue() == expected_0 + expected_1 + expected_2
    assert idx.getvalue().decode() == f"0\t0\n1\t{len(expected_0)}\n2\t{len(expected_0) + len(expected_1)}\n"


def test_our_writer_produces_the_ms1m_header_layout(tmp_path: Path) -> None:
    write_face_dataset(tmp_path, [(0, face_jpeg(1)), (0, face_jpeg(2)), (2, face_jpeg(3))], num_classes=3)
    reader = RecordReader(tmp_path / "train.rec", tmp_path / "train.idx")
    head, _ = unpack_header(reader.read(0))
    assert head.flag == 2 and head.label == (4.0, 7.0)
    ranges = [unpack_header(reader.read(k))[0].label for k in (4, 5, 6)]
    assert ranges == [(1.0, 3.0), (3.0, 3.0), (3.0, 4.0)]  # class 1 has no images: an empty range
    assert (tmp_path / "property").read_text().strip() == "3,112,112"


def test_dataset_works_in_loader_workers(tmp_path: Path) -> None:
    write_face_dataset(tmp_path, [(i // 4, face_jpeg(i)) for i in range(16)], num_classes=4)
    torch.manual_seed(0)
    loader = DataLoader(FaceRecordDataset(tmp_path), batch_size=4, num_workers=2)
    labels = torch.cat([y for _, y in loader])
    assert labels.tolist() == [i // 4 for i in range(16)]


def test_bad_files_name_the_problem(tmp_path: Path) -> None:
    (tmp_path / "x.rec").write_bytes(b"\0" * 16)
    (tmp_path / "x.idx").write_text("0\t0\n")
    with pytest.raises(RecordIOError, match=r"x\.rec: bad magic"):
        RecordReader(tmp_path / "x.rec", tmp_path / "x.idx").read(0)
    (tmp_path / "y.idx").write_text("zero\tzero\n")
    with pytest.raises(RecordIOError, match=r"y\.idx:1"):
        RecordReader(tmp_path / "x.rec", tmp_path / "y.idx")
