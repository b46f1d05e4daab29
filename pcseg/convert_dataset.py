"""Convert your own labelled clouds into the SemanticKITTI layout pcseg trains on.

Input: a folder of ``.ply``/``.pcd`` files with a per-point label field, or ``.npy`` pairs
(``<name>.npy`` points (P, 3|4) x, y, z[, intensity] and ``<name>.labels.npy`` (P,) integer
labels). Files directly in the folder form one sequence (``sequence``, default 0); each
subfolder holding clouds forms its own sequence (a numeric name is its number, other names get
the next free numbers in name order). Output::

    ROOT/sequences/NN/velodyne/NNNNNN.bin    float32 x, y, z, remission per point
    ROOT/sequences/NN/labels/NNNNNN.label    uint32 per point: the raw label id (low 16 bits)
    ROOT/conversion.csv                      source file -> sequence, frame, points

Labels are written as they are (raw ids): the label yaml's ``learning_map`` maps them to
training classes, and with ``label_map`` given every id is checked against it here, so a
typo fails now, naming the file and the ids, rather than in the middle of training.

``.ply`` is read by the small parser below (Open3D's tensor reader silently drops ``ushort``
and ``uint`` properties, common label types); ``.pcd`` through Open3D.
"""

from __future__ import annotations

import csv
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pcseg.data.errors import DatasetFileError, LabelFormatError, ScanFormatError
from pcseg.data.io import write_labels, write_scan
from pcseg.data.labels import LabelMap

__all__ = [
    "LABEL_FIELDS",
    "Conversion",
    "ConversionError",
    "ConvertedScan",
    "convert_folder",
    "plan_conversion",
    "read_labelled_cloud",
    "read_ply",
]

#: Label field names tried in order when none is given (CloudCompare writes ``scalar_<name>``).
LABEL_FIELDS = ("label", "labels", "semantic", "class", "classification", "scalar_label")
#: Intensity field names (as pcseg.data.io reads them).
INTENSITY_FIELDS = ("intensity", "remission", "reflectance", "scalar_intensity")
CLOUD_SUFFIXES = (".ply", ".pcd", ".npy")
NPY_LABEL_SUFFIX = ".labels.npy"

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip


class ConversionError(ValueError):
    """The input folder or the output root cannot be used; the message names it."""


def read_ply(path: str | Path) -> dict[str, np.ndarray]:
    """Every scalar property of the ``vertex`` element of a PLY file -> {name: (P,) array}.

    ASCII and binary (little/big endian); ``vertex`` must come first or follow elements of
    scalar properties only. Raises :class:`ScanFormatError` naming the file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ScanFormatError(path, f"cannot read file: {e.strerror or e}", "unreadable") from e
    end = raw.find(b"end_header")
    if not raw.startswith(b"ply") or end < 0:
        raise ScanFormatError(path, "not a PLY file (no 'ply' ... 'end_header' header)", "corrupt")
    body_start = raw.index(b"\n", end) + 1
    header = raw[:end].decode("ascii", errors="replace").splitlines()
    fmt, elements = None, []  # elements: [name, count, [(prop, dtype) | None for lists]]
    for line in header[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            fmt = words[1]
        elif words[0] == "element":
            elements.append([words[1], int(words[2]), []])
        elif words[0] == "property" and elements:
            if words[1] == "list":
                elements[-1][2].append(None)
            elif words[1] in _PLY_TYPES:
                elements[-1][2].append((words[2], _PLY_TYPES[words[1]]))
            else:
                raise ScanFormatError(path, f"unknown PLY property type '{words[1]}'", "corrupt")
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise ScanFormatError(path, f"unknown PLY format {fmt!r}", "corrupt")
    names = [e[0] for e in elements]
    if "vertex" not in names:
        raise ScanFormatError(path, "PLY file has no 'vertex' element", "corrupt")
    before = elements[: names.index("vertex")]
    vertex = elements[names.index("vertex")]
    if any(p is None for e in before for p in e[2]) or None in vertex[2]:
        raise ScanFormatError(
            path, "list properties before or in 'vertex' are not supported", "corrupt"
        )
    if fmt == "ascii":
        lines = raw[body_start:].decode("ascii", errors="replace").splitlines()
        skip = sum(e[1] for e in before)
        rows = lines[skip : skip + vertex[1]]
        if len(rows) < vertex[1]:
            raise ScanFormatError(
                path, f"header says {vertex[1]} vertices but {len(rows)} lines follow", "corrupt"
            )
        try:
            table = np.array([r.split()[: len(vertex[2])] for r in rows], dtype=np.float64)
        except ValueError as e:
            raise ScanFormatError(path, f"unreadable ASCII vertex row: {e}", "corrupt") from e
        table = table.reshape(vertex[1], len(vertex[2]))
        return {name: table[:, i].astype(dtype) for i, (name, dtype) in enumerate(vertex[2])}
    order = "<" if fmt == "binary_little_endian" else ">"
    offset = body_start
    for e in before:
        offset += e[1] * np.dtype([(n, order + t) for n, t in e[2]]).itemsize
    dtype = np.dtype([(n, order + t) for n, t in vertex[2]])
    need = offset + vertex[1] * dtype.itemsize
    if len(raw) < need:
        raise ScanFormatError(
            path, f"truncated: {len(raw)} bytes, the header needs {need}", "corrupt"
        )
    data = np.frombuffer(raw, dtype=dtype, count=vertex[1], offset=offset)
    return {name: data[name].astype(data[name].dtype.newbyteorder("=")) for name, _ in vertex[2]}


def _read_pcd(path: Path) -> dict[str, np.ndarray]:
    import open3d as o3d

    try:
        cloud = o3d.t.io.read_point_cloud(str(path))
    except RuntimeError as e:
        raise ScanFormatError(path, f"Open3D cannot parse it: {e}", "corrupt") from e
    fields = {}
    for name in cloud.point:
        values = cloud.point[name].numpy()
        if name == "positions":
            fields["x"], fields["y"], fields["z"] = values[:, 0], values[:, 1], values[:, 2]
        elif values.ndim == 1 or values.shape[1] == 1:
            fields[name] = values.reshape(-1)
    return fields


def _labels_from(path: Path, values: np.ndarray) -> np.ndarray:
    """(P,) raw label ids as int64: integral, in [0, 65535] (the .label format's 16 bits)."""
    values = np.asarray(values).reshape(-1)
    if np.issubdtype(values.dtype, np.floating):
        if not np.isfinite(values).all() or (values != np.round(values)).any():
            raise LabelFormatError(path, "label field has non-integer values", "corrupt")
    elif not np.issubdtype(values.dtype, np.integer):
        raise LabelFormatError(path, f"label field of dtype {values.dtype}", "corrupt")
    labels = values.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > 0xFFFF):
        raise LabelFormatError(
            path,
            f"label ids must lie in [0, 65535], got [{labels.min()}, {labels.max()}]",
            "corrupt",
        )
    return labels


def read_labelled_cloud(
    path: str | Path, label_field: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Read a labelled cloud: (xyz (P, 3) float32, remission (P,) float32, labels (P,) int64,
    whether the file had intensity). ``label_field``: None tries :data:`LABEL_FIELDS`.

    ``.npy``: the points file; its labels are ``<name>.labels.npy`` beside it. Raises
    :class:`ScanFormatError` / :class:`LabelFormatError` naming the file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        from pcseg.loose_files import read_npy

        cloud = read_npy(path)
        label_path = path.with_name(path.name[: -len(".npy")] + NPY_LABEL_SUFFIX)
        if not label_path.is_file():
            raise LabelFormatError(label_path, f"label file missing for {path.name}", "missing")
        try:
            values = np.load(label_path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise LabelFormatError(label_path, f"not a plain .npy array: {e}", "corrupt") from e
        labels = _labels_from(label_path, values)
        if labels.shape[0] != cloud.xyz.shape[0]:
            raise LabelFormatError(
                label_path,
                f"{labels.shape[0]} labels but {path.name} has {cloud.xyz.shape[0]} points",
                "count_mismatch",
            )
        return cloud.xyz, cloud.remission, labels, cloud.has_intensity
    if suffix == ".ply":
        fields = read_ply(path)
    elif suffix == ".pcd":
        fields = _read_pcd(path)
    else:
        raise ScanFormatError(path, f"unknown format '{suffix}' (expected .ply, .pcd, .npy)")
    if not {"x", "y", "z"} <= set(fields):
        raise ScanFormatError(path, f"no x, y, z fields (has: {', '.join(fields)})", "corrupt")
    xyz = np.stack([fields["x"], fields["y"], fields["z"]], axis=1).astype(np.float32)
    if xyz.shape[0] == 0:
        raise ScanFormatError(path, "scan is empty (0 points)", "empty")
    if not np.isfinite(xyz).all():
        raise ScanFormatError(path, "NaN/inf coordinates", "non_finite")
    wanted = [label_field] if label_field else list(LABEL_FIELDS)
    found = next((f for f in wanted if f in fields), None)
    if found is None:
        raise LabelFormatError(
            path,
            f"no label field {' or '.join(repr(w) for w in wanted)} "
            f"(fields: {', '.join(fields)}); name it with --label-field",
            "missing",
        )
    intensity = next((f for f in INTENSITY_FIELDS if f in fields), None)
    remission = (
        fields[intensity].astype(np.float32) if intensity else np.zeros(len(xyz), np.float32)
    )
    return xyz, remission, _labels_from(path, fields[found]), intensity is not None


@dataclass(frozen=True)
class ConvertedScan:
    """One planned (or done) conversion: source file -> sequence NN, frame NNNNNN."""

    source: Path
    sequence: str
    frame: str


def _clouds_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and p.suffix.lower() in CLOUD_SUFFIXES
        and not p.name.lower().endswith(NPY_LABEL_SUFFIX)
    )


def plan_conversion(input_dir: str | Path, sequence: int = 0) -> list[ConvertedScan]:
    """Which file becomes which scan (see the module docstring). Raises
    :class:`ConversionError` when the folder is missing or holds no clouds."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise ConversionError(f"{input_dir}: input folder does not exist")
    groups: list[tuple[str, list[Path]]] = []
    top = _clouds_in(input_dir)
    if top:
        groups.append((str(int(sequence)), top))
    subdirs = sorted(p for p in input_dir.iterdir() if p.is_dir() and _clouds_in(p))
    numeric = [d for d in subdirs if re.fullmatch(r"\d+", d.name)]
    named = [d for d in subdirs if d not in numeric]
    used = {int(s) for s, _ in groups} | {int(d.name) for d in numeric}
    if len(used) < len(groups) + len(numeric):
        raise ConversionError(
            f"{input_dir}: top-level files go to sequence {sequence}, which a subfolder also "
            "names; pass another --sequence"
        )
    groups += [(d.name, _clouds_in(d)) for d in numeric]
    next_free = max(used, default=-1) + 1
    for d in named:
        groups.append((str(next_free), _clouds_in(d)))
        next_free += 1
    if not groups:
        raise ConversionError(
            f"{input_dir}: no clouds ({', '.join(CLOUD_SUFFIXES)}) in it or its subfolders"
        )
    return [
        ConvertedScan(f, f"{int(seq):02d}", f"{i:06d}")
        for seq, files in sorted(groups, key=lambda g: int(g[0]))
        for i, f in enumerate(files)
    ]


@dataclass
class Conversion:
    """Result: scans written (with point counts) and files that failed (path, reason)."""

    root: Path
    written: list[tuple[ConvertedScan, int]]
    failed: list[tuple[Path, str]]
    without_intensity: list[Path]


def convert_folder(
    input_dir: str | Path,
    output_root: str | Path,
    sequence: int = 0,
    label_field: str | None = None,
    label_map: LabelMap | None = None,
    overwrite: bool = False,
    on_scan: Callable[[ConvertedScan, int | None, str | None], None] | None = None,
) -> Conversion:
    """Convert every cloud of ``input_dir`` (see the module docstring) into ``output_root``.

    A bad file is recorded in ``failed`` (with the reason) and skipped; the rest are written.
    ``label_map``: check every raw id against its ``learning_map``. ``overwrite``: replace
    existing sequence folders (otherwise a non-empty one raises :class:`ConversionError`).
    ``on_scan(scan, points or None, error or None)`` after each file (progress).
    """
    plan = plan_conversion(input_dir, sequence)
    root = Path(output_root)
    for seq in sorted({s.sequence for s in plan}):
        seq_dir = root / "sequences" / seq
        if seq_dir.exists() and any(seq_dir.iterdir()):
            if not overwrite:
                raise ConversionError(
                    f"{seq_dir}: already holds files; pass --overwrite to replace the sequence"
                )
            shutil.rmtree(seq_dir)
    result = Conversion(root, [], [], [])
    for scan in plan:
        seq_dir = root / "sequences" / scan.sequence
        try:
            xyz, remission, labels, has_intensity = read_labelled_cloud(scan.source, label_field)
            if label_map is not None:
                label_map.to_train(labels, scan.source)  # raises naming the file and the ids
            write_scan(seq_dir / "velodyne" / f"{scan.frame}.bin", xyz, remission)
            write_labels(seq_dir / "labels" / f"{scan.frame}.label", labels)
        except DatasetFileError as e:
            result.failed.append((scan.source, str(e)))
            if on_scan is not None:
                on_scan(scan, None, str(e))
            continue
        if not has_intensity:
            result.without_intensity.append(scan.source)
        result.written.append((scan, int(xyz.shape[0])))
        if on_scan is not None:
            on_scan(scan, int(xyz.shape[0]), None)
    _write_index(root / "conversion.csv", result.written)
    return result


def _write_index(path: Path, written: Iterable[tuple[ConvertedScan, int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["source", "sequence", "frame", "points"])
        for scan, points in written:
            out.writerow([str(scan.source), scan.sequence, scan.frame, points])
