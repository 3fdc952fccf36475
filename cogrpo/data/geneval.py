"""GenEval's file formats, exactly: metadata JSONL, the generated-image folder layout, results JSONL, and the
summary score (mean over tasks of per-task accuracy).

Layout: <outdir>/<index:05d>/metadata.jsonl (the record, one line) and <outdir>/<index:05d>/samples/<n:05d>.png.
Writers build the whole folder beside the target and rename it into place, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from cogrpo.data.jsonl import read_jsonl
from cogrpo.data.prompts import TASKS, tokenize
from cogrpo.data.world import CLASSES, COLORS, RELATIONS
from cogrpo.proto.errors import InputError


BUILTIN_DIR = Path(__file__).parent / "metadata"
BUILTIN_PREFIX = "builtin:"


def resolve_metadata_path(spec: str) -> Path:
    """A metadata file path, or "builtin:NAME" for one shipped with the package (see `builtin_metadata`)."""
    if spec.startswith(BUILTIN_PREFIX):
        return BUILTIN_DIR / f"{spec[len(BUILTIN_PREFIX):]}.jsonl"
    return Path(spec)


def _check_entry(entry: object, n_includes: int, where: str) -> None:
    if not isinstance(entry, dict):
        raise InputError(f"{where}: include/exclude entries must be objects")
    unknown = set(entry) - {"class", "count", "color", "position"}
    if unknown:
        raise InputError(f"{where}: unknown entry key {sorted(unknown)[0]!r}")
    if entry.get("class") not in CLASSES:
        raise InputError(f"{where}: unknown class {entry.get('class')!r} (classes: {', '.join(CLASSES)})")
    count = entry.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise InputError(f"{where}: count must be a positive integer, got {count!r}")
    if "color" in entry and entry["color"] not in COLORS:
        raise InputError(f"{where}: unknown color {entry['color']!r} (colors: {', '.join(COLORS)})")
    if "position" in entry:
        pos = entry["position"]
        if (not isinstance(pos, list) or len(pos) != 2 or pos[0] not in RELATIONS
                or not isinstance(pos[1], int) or not 0 <= pos[1] < n_includes):
            raise InputError(f"{where}: position must be [relation, include index], got {pos!r}")


def validate_record(record: object, where: str) -> dict:
    """Check one metadata record; raise InputError naming `where` on the first problem."""
    if not isinstance(record, dict):
        raise InputError(f"{where}: a metadata record must be a JSON object")
    for key in ("tag", "include", "prompt"):
        if key not in record:
            raise InputError(f"{where}: missing key {key!r}")
    if record["tag"] not in TASKS:
        raise InputError(f"{where}: unknown tag {record['tag']!r} (tasks: {', '.join(TASKS)})")
    includes = record["include"]
    if not isinstance(includes, list) or not includes:
        raise InputError(f"{where}: include must be a non-empty list")
    for entry in includes + list(record.get("exclude", [])):
        _check_entry(entry, len(includes), where)
    if not isinstance(record["prompt"], str):
        raise InputError(f"{where}: prompt must be a string")
    try:
        tokenize(record["prompt"])
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    return record


def read_metadata(path: str | Path) -> list[dict]:
    return [validate_record(record, where) for where, record in read_jsonl(path, "metadata")]


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    """Write JSON lines atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, encoding="utf-8") as tmp:
        tmp.write("".join(json.dumps(row) + "\n" for row in rows))
    os.replace(tmp.name, path)


def write_generation(outdir: str | Path, records: list[dict], images: list[np.ndarray]) -> None:
    """images[i]: uint8 RGB array (n, H, W, 3) for records[i]."""
    outdir = Path(outdir)
    if outdir.exists() and any(outdir.iterdir()):
        raise InputError(f"output folder exists and is not empty: {outdir}")
    outdir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.", dir=outdir.parent))
    try:
        for index, (record, batch) in enumerate(zip(records, images, strict=True)):
            folder = staging / f"{index:05d}"
            (folder / "samples").mkdir(parents=True)
            (folder / "metadata.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
            for n, image in enumerate(batch):
                Image.fromarray(image).save(folder / "samples" / f"{n:05d}.png")
        if outdir.exists():
            outdir.rmdir()
        staging.rename(outdir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def read_generation(outdir: str | Path) -> list[tuple[dict, list[Path]]]:
    """(record, sample paths) per prompt folder, in index order."""
    outdir = Path(outdir)
    if not outdir.is_dir():
        raise InputError(f"image folder not found: {outdir}")
    folders = sorted(p for p in outdir.iterdir() if p.is_dir() and p.name.isdigit())
    if not folders:
        raise InputError(f"no GenEval prompt folders (00000, 00001, ...) in {outdir}")
    out = []
    for folder in folders:
        records = read_metadata(folder / "metadata.jsonl")
        samples = sorted((folder / "samples").glob("*.png"))
        if not samples:
            raise InputError(f"no samples/*.png in {folder}")
        out.append((records[0], samples))
    return out


def load_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None


def summarize(results: list[dict]) -> dict:
    """GenEval's summary: per-task accuracy, and overall = mean over the tasks present."""
    by_task: dict[str, list[float]] = defaultdict(list)
    for row in results:
        by_task[row["tag"]].append(float(row["correct"]))
    task_acc = {tag: float(np.mean(v)) for tag, v in sorted(by_task.items())}
    return {"overall": float(np.mean(list(task_acc.values()))), "by_task": task_acc}
