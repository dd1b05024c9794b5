"""Evaluation sets in the real formats, built from sample faces of people the model never trains on.

The real IJB-C and LFW cannot ship, so this writes an IJB-C-format mini set (loose crops, the four meta
files, 1:N gallery/probe CSVs) and an InsightFace-format verification ``.bin`` from held-out ORL subjects.
Landmarks come from running the bundled detector once on each source face; every synthetic view is then a
known similarity warp of it, so its 5 points are exact (as the detector-provided points of IJB-C are close).
Several media per template (each media a different source photo, its frames small jitters of one view), all
template pairs in the 1:1 list, one gallery template per subject split into G1/G2 like IJB-C's halves.
Everything comes from one seeded generator: the same config gives byte-identical files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from components.align.similarity import align_face
from components.augment.degrade import degrade
from components.detect.centerface import CenterFaceDetector, bundled_centerface_path
from components.evaluation.verification import write_bin
from components.io.atomic import atomic_dir
from components.sample.orl import IMAGES_PER_IDENTITY, load_orl_face
from components.sample.raw_photos import compose_photo, encode_jpeg

_MIRROR = [1, 0, 2, 4, 3]  # landmark order after a horizontal flip: eyes and mouth corners swap


@dataclass(frozen=True)
class EvalSetConfig:
    subjects: tuple[int, ...]  # ORL subject numbers held out from training
    templates_per_subject: int = 30
    max_media_per_template: int = 3
    max_frames_per_media: int = 2
    bin_pairs: int = 600
    seed: int = 0
    jpeg_quality: tuple[int, int] = (70, 95)
    # 0: every template pair is in the 1:1 list (IJB-C-like for a small set). n > 0: each template is paired
    # with at most n later templates, half of its own subject where it has them, the rest impostors (IJB-C
    # itself lists 15.7M of its 267M possible pairs): a set of 10^5 images then stays 10^6 pairs, not 10^9.
    max_pairs_per_template: int = 0


@dataclass(frozen=True)
class SourceFace:
    rgb: np.ndarray  # the ORL photo as RGB
    landmarks: np.ndarray  # (5, 2) in its pixels
    score: float


def detect_sources(subjects: tuple[int, ...]) -> dict[int, list[SourceFace]]:
    """Landmarks of every ORL photo of ``subjects``, found by the bundled detector on a padded canvas."""
    detector = CenterFaceDetector(bundled_centerface_path(), 320, 0.3, 0.4)
    pad, zoom = 80, 2.0
    out: dict[int, list[SourceFace]] = {}
    for subject in subjects:
        faces = []
        for index in range(1, IMAGES_PER_IDENTITY + 1):
            grey = load_orl_face(subject, index)
            big = cv2.resize(grey, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_CUBIC)
            canvas = cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
            found = detector.detect(cv2.cvtColor(canvas, cv2.COLOR_GRAY2RGB))
            if not found:
                continue  # a source photo the detector misses is left out, as IJB-C lists detected faces only
            best = max(found, key=lambda f: f.area)
            faces.append(SourceFace(cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB), (best.landmarks - pad) / zoom,
                                    float(best.score)))
        if len(faces) < 2:
            raise RuntimeError(f"ORL subject {subject}: the detector found only {len(faces)} usable faces")
        out[subject] = faces
    return out


def _view(rng: np.random.Generator, source: SourceFace, pose: np.ndarray | None = None,
          jitter: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One loose crop of ``source``: (image, landmarks, pose). ``pose`` + small ``jitter`` = a video frame."""
    if pose is None:  # scale, rotation (deg), dx, dy (fractions), mirror, brightness, contrast, blur sigma
        pose = np.array([rng.uniform(1.0, 1.8), rng.uniform(-15, 15), rng.uniform(-0.08, 0.08),
                         rng.uniform(-0.08, 0.08), float(rng.uniform() < 0.3), rng.uniform(-25, 25),
                         rng.uniform(0.75, 1.2), rng.uniform(0.0, 1.2)])
    p = pose + jitter * np.array([0.05, 2.0, 0.01, 0.01, 0, 4, 0.03, 0.1]) * rng.standard_normal(8)
    scale, angle, dx, dy, mirror, bright, contrast, blur = p
    h, w = source.rgb.shape[:2]
    out_w, out_h = int(round(w * scale * 1.45)), int(round(h * scale * 1.3))
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), float(angle), float(scale))
    matrix[:, 2] += np.array([out_w / 2 + dx * out_w, out_h / 2 + dy * out_h]) - np.array([w / 2, h / 2])
    img = cv2.warpAffine(source.rgb, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    landmarks = source.landmarks @ matrix[:, :2].T + matrix[:, 2]
    if mirror > 0.5:
        img = np.ascontiguousarray(img[:, ::-1])
        landmarks = np.column_stack([out_w - 1 - landmarks[:, 0], landmarks[:, 1]])[_MIRROR]
    img = img.astype(np.float32) * contrast + bright + (img.mean() * (1 - contrast))
    if blur > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), float(blur))
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), landmarks, pose


def write_ijbc_mini(root: Path, sources: dict[int, list[SourceFace]], config: EvalSetConfig,
                    target: str = "ijbc", hard: bool = False) -> dict[str, int]:
    """The IJB-C layout from ``sources``. ``hard``: every template is one image, which also suffers two
    degradations (low resolution, blur, strong JPEG, occlusion, lighting, rotation: components/augment/degrade.py),
    from its own seed. Pooling several media per template averages degradations away: with the clean set's
    templates SFace still scored 0.99 TAR@FAR=1e-3 on degraded images, 0.77 with one image each."""
    rng = np.random.default_rng([config.seed, 3 if hard else 1])
    crops, meta = root / "loose_crop", root / "meta"
    crops.mkdir(parents=True)
    meta.mkdir()
    tid_mid, lmk_lines, subject_rows = [], [], []
    template_subject: list[int] = []
    image_no, media_no = 0, 0
    jobs = [(s, t) for s in sources for t in range(config.templates_per_subject)]
    for subject, _ in tqdm(jobs, desc=root.name, unit="template", disable=None):
        template_id = len(template_subject) + 1
        template_subject.append(subject)
        media = 1 if hard else int(rng.integers(1, config.max_media_per_template + 1))
        picks = rng.choice(len(sources[subject]), size=media, replace=False)
        for pick in picks:
            media_no += 1
            pose = None
            for frame in range(1 if hard else int(rng.integers(1, config.max_frames_per_media + 1))):
                img, lmk, pose = _view(rng, sources[subject][pick], pose, jitter=1.0 if frame else 0.0)
                if hard:
                    img, lmk, _ = degrade(rng, img, lmk)
                image_no += 1
                name = f"{image_no}.jpg"
                (crops / name).write_bytes(encode_jpeg(img, int(rng.integers(*config.jpeg_quality))))
                score = float(np.clip(sources[subject][pick].score * rng.uniform(0.85, 1.0), 0.05, 1.0))
                tid_mid.append(f"{name} {template_id} {media_no}")
                lmk_lines.append(name + " " + " ".join(f"{v:.3f}" for v in lmk.ravel()) + f" {score:.5f}")
                subject_rows.append((template_id, subject, name))
    (meta / f"{target}_face_tid_mid.txt").write_text("\n".join(tid_mid) + "\n")
    (meta / f"{target}_name_5pts_score.txt").write_text("\n".join(lmk_lines) + "\n")

    subjects = np.asarray(template_subject)
    if config.max_pairs_per_template:
        i, j = _sampled_pairs(rng, subjects, config.max_pairs_per_template)
    else:
        i, j = np.triu_indices(len(subjects), k=1)
    labels = (subjects[i] == subjects[j]).astype(int)
    pairs = np.column_stack([i + 1, j + 1, labels])
    np.savetxt(meta / f"{target}_template_pair_label.txt", pairs, fmt="%d", delimiter=" ")

    # 1:N: each subject's first template is its gallery entry; G1/G2 take alternate subjects (disjoint halves).
    gallery_template = {s: int(np.flatnonzero(subjects == s)[0]) + 1 for s in sources}
    halves = {"G1": list(sources)[0::2], "G2": list(sources)[1::2]}
    header = "TEMPLATE_ID,SUBJECT_ID,FILENAME\n"
    for name, members in halves.items():
        rows = [f"{t},{s},{f}" for t, s, f in subject_rows if s in members and t == gallery_template[s]]
        (meta / f"{target}_1N_gallery_{name}.csv").write_text(header + "\n".join(rows) + "\n")
    probe_rows = [f"{t},{s},{f}" for t, s, f in subject_rows if t != gallery_template[s]]
    (meta / f"{target}_1N_probe_mixed.csv").write_text(header + "\n".join(probe_rows) + "\n")
    return {"images": image_no, "media": media_no, "templates": len(subjects), "pairs": len(pairs),
            "genuine_pairs": int(labels.sum())}


def _sampled_pairs(rng: np.random.Generator, subjects: np.ndarray, per_template: int) -> tuple[np.ndarray, np.ndarray]:
    """Template index pairs (i < j): for each template up to ``per_template // 2`` later templates of its own
    subject, and up to the rest impostors (later templates of other subjects, drawn at random); no pair twice."""
    firsts, seconds = [], []
    by_subject = {s: np.flatnonzero(subjects == s) for s in np.unique(subjects)}
    for i, subject in enumerate(subjects):
        own = by_subject[subject]
        own = own[own > i]
        genuine = rng.choice(own, min(len(own), per_template // 2), replace=False) if len(own) else own
        wanted = per_template - len(genuine)
        draws = rng.integers(i + 1, len(subjects), 2 * wanted) if i + 1 < len(subjects) else own
        impostor = pd.unique(draws[subjects[draws] != subject])[:wanted]  # first-drawn order: reproducible
        partners = np.sort(np.concatenate([genuine, impostor]))
        firsts.append(np.full(len(partners), i))
        seconds.append(partners)
    return np.concatenate(firsts).astype(np.int64), np.concatenate(seconds).astype(np.int64)


def _aligned_view(rng: np.random.Generator, source: SourceFace, config: EvalSetConfig) -> bytes:
    img, lmk, _ = _view(rng, source)
    return encode_jpeg(align_face(img, lmk)[0], int(rng.integers(*config.jpeg_quality)))


def write_verification_bin(path: Path, sources: dict[int, list[SourceFace]], config: EvalSetConfig) -> dict[str, int]:
    """Half genuine, half impostor pairs, balanced within each of 10 contiguous folds (the LFW arrangement)."""
    rng = np.random.default_rng([config.seed, 2])
    subjects = list(sources)
    if config.bin_pairs % 20:
        raise ValueError(f"bin_pairs must be a multiple of 20 (10 folds x genuine/impostor), got {config.bin_pairs}")
    images: list[bytes] = []
    issame: list[bool] = []
    per_fold = config.bin_pairs // 10
    for _ in tqdm(range(10), desc="verification bin", unit="fold", disable=None):
        for k in range(per_fold):
            same = k < per_fold // 2
            a = int(rng.choice(subjects))
            b = a if same else int(rng.choice([s for s in subjects if s != a]))
            ia, ib = rng.choice(len(sources[a]), 2, replace=False) if same else (rng.integers(len(sources[a])),
                                                                                rng.integers(len(sources[b])))
            images += [_aligned_view(rng, sources[a][int(ia)], config), _aligned_view(rng, sources[b][int(ib)], config)]
            issame.append(same)
    write_bin(path, images, issame)
    return {"pairs": len(issame), "genuine_pairs": int(sum(issame))}


def write_holdout_photos(root: Path, subjects: tuple[int, ...], per_subject: int = IMAGES_PER_IDENTITY,
                         seed: int = 0) -> int:
    """Raw photos (a face on a busy background, as the training photos) of held-out people: for trying the
    served model by hand (``faceforge client verify photos/orl_s33/01.jpg photos/orl_s33/02.jpg``) and, through
    the served path, each version's reference for the drift check (eval.reference_photos). Every source photo
    of a person is used in turn (again, placed anew, past ``IMAGES_PER_IDENTITY``)."""
    rng = np.random.default_rng([seed, 4])
    for subject in subjects:
        for index in range(1, per_subject + 1):
            face = load_orl_face(subject, (index - 1) % IMAGES_PER_IDENTITY + 1)
            photo = compose_photo(rng, face, None, 480, 360)
            target = root / f"orl_s{subject:02d}" / f"{index:02d}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(encode_jpeg(photo, 92, str(target)))
    return len(subjects) * per_subject


def write_eval_sets(out_dir: Path, config: EvalSetConfig) -> dict[str, dict[str, int]]:
    """``out_dir/ijbc_mini/`` and its degraded twin ``out_dir/ijbc_hard/`` (IJB-C layout),
    ``out_dir/orl_holdout.bin`` and raw ``out_dir/photos/`` of the held-out people, as one atomic folder."""
    if len(config.subjects) < 2:
        raise ValueError("the evaluation sets need at least 2 held-out subjects")
    sources = detect_sources(config.subjects)
    with atomic_dir(out_dir) as tmp:
        ijbc = write_ijbc_mini(tmp / "ijbc_mini", sources, config)
        hard = write_ijbc_mini(tmp / "ijbc_hard", sources, config, hard=True)
        verification = write_verification_bin(tmp / "orl_holdout.bin", sources, config)
        photos = write_holdout_photos(tmp / "photos", config.subjects, seed=config.seed)
    return {"ijbc_mini": ijbc, "ijbc_hard": hard, "orl_holdout": verification, "photos": {"photos": photos}}
