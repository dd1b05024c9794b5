"""Verification ``.bin`` files: the real format loads, and a malicious pickle cannot run code."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from components.evaluation.verification import UnsafeBinError, load_bin, write_bin


def _faces(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)
        out.append(cv2.imencode(".png", img)[1].tobytes())  # lossless: decoded pixels are checkable
    return out


def test_round_trip(tmp_path: Path) -> None:
    images = _faces(8)
    write_bin(tmp_path / "lfw.bin", images, [True, False, True, False])
    loaded = load_bin(tmp_path / "lfw.bin")
    assert loaded.name == "lfw" and loaded.images.shape == (8, 112, 112, 3)
    assert loaded.issame.tolist() == [True, False, True, False]
    expected = cv2.cvtColor(cv2.imdecode(np.frombuffer(images[3], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(loaded.images[3], expected)


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_older_protocols_and_numpy_flags_load(tmp_path: Path, protocol: int) -> None:
    # Protocol 0/2 from Python 3 encode bytes through _codecs.encode; some tools store the flags as an array.
    payload = (_faces(4), np.array([True, False]))
    (tmp_path / "old.bin").write_bytes(pickle.dumps(payload, protocol=protocol))
    assert load_bin(tmp_path / "old.bin").issame.tolist() == [True, False]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # what an attacker's .bin does: make the unpickler call os.system
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "evil.bin").write_bytes(pickle.dumps((_faces(2), [_Evil(marker)])))
    with pytest.raises(UnsafeBinError, match=r"evil\.bin: refuses to load global (posix|os)\.system"):
        load_bin(tmp_path / "evil.bin")
    assert not marker.exists()
    # The plain unpickler would have run it: proof the file really is an exploit.
    pickle.loads((tmp_path / "evil.bin").read_bytes())
    assert marker.exists()


def test_builtin_eval_is_refused(tmp_path: Path) -> None:
    class Eval:
        def __reduce__(self):
            return (eval, ("__import__('os').getcwd()",))

    (tmp_path / "e.bin").write_bytes(pickle.dumps(Eval()))
    with pytest.raises(UnsafeBinError, match="builtins.eval"):
        load_bin(tmp_path / "e.bin")


def test_malformed_files_name_the_problem(tmp_path: Path) -> None:
    good = pickle.dumps((_faces(4), [True, False]))
    (tmp_path / "cut.bin").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"cut\.bin: not a readable verification \.bin"):
        load_bin(tmp_path / "cut.bin")
    (tmp_path / "odd.bin").write_bytes(pickle.dumps((_faces(3), [True, False])))
    with pytest.raises(ValueError, match=r"odd\.bin: 3 images for 2 pairs"):
        load_bin(tmp_path / "odd.bin")
    (tmp_path / "junk.bin").write_bytes(pickle.dumps((_faces(1) + [b"not an image"], [True])))
    with pytest.raises(ValueError, match=r"junk\.bin: image 1 \(pair 0\) cannot be decoded"):
        load_bin(tmp_path / "junk.bin")
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        load_bin(tmp_path / "missing.bin")
