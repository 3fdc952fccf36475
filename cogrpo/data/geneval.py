"""GenEval's file formats, exactly: metadata JSONL, the generated-image folder layout, results JSONL, and the
summary score (mean over tasks of per-task accuracy). A metadata file may also hold lines with a prompt alone.

Records are checked for the prompts' world: the shapes world's (its vocabulary, classes and colours: what its judge
scores) or an open one's (a model with its own text encoder: any prompt, any class and colour, as GenEval's own
metadata names COCO's).

Layout: <outdir>/<index:05d>/metadata.jsonl (the record, one line) and <outdir>/<index:05d>/samples/<n:05d>.png.
Writers build the whole folder beside the target and rename it into place, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from cogrpo.data.jsonl import read_jsonl
from cogrpo.data.prompts import MAX_COUNT, TASKS, check_prompt, parse_prompt
from cogrpo.data.world import CLASSES, COLORS, RELATIONS
from cogrpo.proto.errors import InputError, clip
from cogrpo.proto.kinds import OPEN_PROMPT_KINDS
from cogrpo.proto.paths import output_folder


BUILTIN_DIR = Path(__file__).parent / "metadata"
BUILTIN_PREFIX = "builtin:"


def resolve_metadata_path(spec: str) -> Path:
    """A metadata file path, or "builtin:NAME" for one shipped with the package (see `builtin_metadata`)."""
    if spec.startswith(BUILTIN_PREFIX):
        return BUILTIN_DIR / f"{spec[len(BUILTIN_PREFIX):]}.jsonl"
    return Path(spec)


MAX_NAME = 100  # characters of an open world's class or colour name
GENEVAL_KEYS = ("tag", "include", "exclude")


def _check_name(entry: dict, key: str, known: tuple[str, ...] | None, where: str) -> None:
    """A class or colour: one of the shapes world's (`known`), or any short name in an open world."""
    value = entry.get(key)
    if known is None:
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME:
            raise InputError(f"{where}: {key} must be a name of 1 to {MAX_NAME} characters, got "
                             f"{clip(repr(value))}")
    elif value not in known:
        raise InputError(f"{where}: unknown {key} {clip(repr(value))} for the shapes world, whose judge scores only "
                         f"{', '.join(known)} (any {key}: a model with its own text encoder, model.kind "
                         f"{', '.join(OPEN_PROMPT_KINDS)})")


def _check_entry(entry: object, n_includes: int, high: int, where: str, world: str) -> None:
    if not isinstance(entry, dict):
        raise InputError(f"{where}: include/exclude entries must be objects")
    unknown = set(entry) - {"class", "count", "color", "position"}
    if unknown:
        raise InputError(f"{where}: unknown entry key {clip(repr(sorted(unknown)[0]))}")
    shapes = world == "shapes"
    _check_name(entry, "class", CLASSES if shapes else None, where)
    count = entry.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= high:
        raise InputError(f"{where}: count must be an integer from 1 to {high} here, got {clip(repr(count))}")
    if "color" in entry:
        _check_name(entry, "color", COLORS if shapes else None, where)
    if "position" in entry:
        pos = entry["position"]
        if (not isinstance(pos, list) or len(pos) != 2 or pos[0] not in RELATIONS
                or not isinstance(pos[1], int) or not 0 <= pos[1] < n_includes):
            raise InputError(f"{where}: position must be [relation, include index], got {clip(repr(pos))}")


def validate_record(record: object, where: str, world: str) -> dict:
    """Check one metadata record for its world ("shapes" or "open"); raise InputError naming `where` on the first
    problem."""
    if not isinstance(record, dict):
        raise InputError(f"{where}: a metadata record must be a JSON object")
    for key in ("tag", "include", "prompt"):
        if key not in record:
            raise InputError(f"{where}: missing key {key!r}")
    if record["tag"] not in TASKS:
        raise InputError(f"{where}: unknown tag {clip(repr(record['tag']))} (tasks: {', '.join(TASKS)})")
    includes = record["include"]
    if not isinstance(includes, list) or not includes:
        raise InputError(f"{where}: include must be a non-empty list")
    excludes = record.get("exclude", [])
    if not isinstance(excludes, list):
        raise InputError(f"{where}: exclude must be a list")
    for entry in includes:
        _check_entry(entry, len(includes), MAX_COUNT, where, world)
    for entry in excludes:  # counting's "not one more"
        _check_entry(entry, len(includes), MAX_COUNT + 1, where, world)
    if not isinstance(record["prompt"], str):
        raise InputError(f"{where}: prompt must be a string")
    try:
        check_prompt(record["prompt"], world)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    _check_agrees(record, where)
    return record


def prompt_record(prompt: str, where: str, world: str) -> dict:
    """A prompt alone as a record: in the shapes world, the metadata record its template asks for (a prompt its
    judge cannot score is refused); in an open world, {"prompt": prompt}."""
    try:
        return parse_prompt(prompt) if world == "shapes" else {"prompt": check_prompt(prompt, world)}
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None


def read_record(value: object, where: str, world: str) -> dict:
    """One line of a JSONL prompt file: GenEval metadata (it has a tag, include or exclude), or an object whose
    string `prompt` is taken alone (other fields are ignored)."""
    if isinstance(value, dict) and not any(key in value for key in GENEVAL_KEYS):
        if not isinstance(value.get("prompt"), str):
            raise InputError(f"{where}: a line needs a string 'prompt' (and for GenEval metadata, tag and include)")
        return prompt_record(value["prompt"], where, world)
    return validate_record(value, where, world)


def _check_agrees(record: dict, where: str) -> None:
    """A prompt written in one of the six templates must ask for what the record's tag, include and exclude
    judge; a free-form prompt (in the vocabulary) is taken as it is."""
    try:
        asked = parse_prompt(record["prompt"])
    except InputError:
        return
    for key in ("tag", "include", "exclude"):
        if asked.get(key, []) != record.get(key, []):
            raise InputError(f"{where}: the prompt {clip(record['prompt'])!r} disagrees with the record's {key} "
                             f"({clip(json.dumps(record.get(key, [])))}; the prompt asks for "
                             f"{clip(json.dumps(asked.get(key, [])))})")


def read_metadata(path: str | Path, world: str) -> list[dict]:
    """The records of a JSONL prompt file (`read_record`), checked for `world`."""
    return [read_record(value, where, world) for where, value in read_jsonl(path, "metadata")]


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    """Write JSON lines atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, encoding="utf-8") as tmp:
        tmp.write("".join(json.dumps(row) + "\n" for row in rows))
    os.replace(tmp.name, path)


def write_generation(outdir: str | Path, records: list[dict], images: list[np.ndarray]) -> None:
    """images[i]: uint8 RGB array (n, H, W, 3) for records[i]."""
    outdir = output_folder(outdir, "output folder")
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


def read_generation(outdir: str | Path, world: str) -> list[tuple[dict, list[Path]]]:
    """(record, sample paths) per prompt folder, in index order; records checked for `world`."""
    outdir = Path(outdir)
    if not outdir.is_dir():
        raise InputError(f"image folder not found: {outdir}")
    folders = sorted(p for p in outdir.iterdir() if p.is_dir() and p.name.isdigit())
    if not folders:
        raise InputError(f"no GenEval prompt folders (00000, 00001, ...) in {outdir}")
    out = []
    for folder in folders:
        records = read_metadata(folder / "metadata.jsonl", world)
        samples = sorted((folder / "samples").glob("*.png"))
        if not samples:
            raise InputError(f"no samples/*.png in {folder}")
        out.append((records[0], samples))
    return out


MIN_SIDE, MAX_PIXELS = 16, 4096 * 4096  # what a generated image to judge may measure


def load_image(path: Path) -> np.ndarray:
    """An RGB image, its size checked from the header before it is decoded (a 20000x20000 claim is refused, not
    expanded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # refused, not warned about
            im = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"image {clip(str(path))} claims more pixels than any image to score "
                         f"(at most {MAX_PIXELS})") from None
    except OSError as exc:
        raise InputError(f"cannot read image {clip(str(path))}: {clip(str(exc))}") from None
    with im:
        width, height = im.size
        if min(width, height) < MIN_SIDE or width * height > MAX_PIXELS:
            raise InputError(f"image {clip(str(path))} is {width}x{height}: images to score have sides of at least "
                             f"{MIN_SIDE} px and at most {MAX_PIXELS} pixels")
        try:
            return np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read image {clip(str(path))}: {clip(str(exc))}") from None


def load_generation(folders: list[tuple[dict, list[Path]]]) -> list[np.ndarray]:
    """The images of read_generation's folders, one (n, H, W, 3) array per prompt: one size for the whole folder,
    as one model's generation has."""
    loaded = [[load_image(path) for path in paths] for _, paths in folders]
    sizes = {image.shape for images in loaded for image in images}
    if len(sizes) > 1:
        first, other = sorted(sizes)[:2]
        raise InputError(f"the images to score differ in size ({first[1]}x{first[0]} and {other[1]}x{other[0]}): "
                         "a generation folder holds one model's images, all of one size")
    return [np.stack(images) for images in loaded]


def summarize(results: list[dict]) -> dict:
    """GenEval's summary: per-task accuracy, and overall = mean over the tasks present."""
    by_task: dict[str, list[float]] = defaultdict(list)
    for row in results:
        by_task[row["tag"]].append(float(row["correct"]))
    task_acc = {tag: float(np.mean(v)) for tag, v in sorted(by_task.items())}
    return {"overall": float(np.mean(list(task_acc.values()))), "by_task": task_acc}
