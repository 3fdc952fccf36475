"""`cogrpo export`: a trained folder model as its pipeline's folder (aMUSEd: AmusedPipeline.save_pretrained), so
the fine-tuned transformer leaves the project in the layout diffusers and the model's own code load."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from cogrpo.proto.paths import output_folder


def cmd_export(args: argparse.Namespace) -> None:
    """Everything is checked first; the folder is written beside --out and renamed into place when complete, so a
    failure leaves nothing behind."""
    from cogrpo.cluster.process import configure_compute
    from cogrpo.models.checkpoint import export_pipeline
    from cogrpo.proto.config import load_config
    from cogrpo.proto.layout import run_checkpoint

    out = output_folder(args.out, "--out")
    run, checkpoint = run_checkpoint(Path(args.checkpoint))
    weights = checkpoint.exported_model()
    config = load_config(run.config, [*args.overrides, f"model.checkpoint={json.dumps(str(weights))}"])
    configure_compute(config.threads)
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)  # a killed export's leftover
    try:
        export_pipeline(config.model, staging)
        staging.replace(out)  # onto nothing, or onto the empty folder output_folder admitted
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"wrote {out} ({config.model.kind} pipeline, transformer from {weights})")
