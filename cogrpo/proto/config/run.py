"""The run's config: iterations, evaluation and checkpoint cadence, pretraining, the Ray cluster, metrics."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from cogrpo.proto.config.base import Section, Steps


class TrainConfig(Section):
    iterations: int = Field(60, ge=1)
    # RL prompts: null = the generated train split (no held-out composition), or a metadata file.
    prompts: str | None = None
    eval_every: int = Field(20, ge=1)
    eval_at_start: bool = True
    eval_metadata: dict[str, str] = {"heldout": "builtin:heldout", "train": "builtin:train"}
    eval_steps: tuple[Steps, ...] = Field((8,), min_length=1)
    checkpoint_every: int = Field(20, ge=1)
    run_dir: str | None = None  # default: runs/<timestamp>
    # where a relative run directory goes (a shared filesystem path for a cluster job; default: the working
    # directory). Object storage is reached through a mount (mountpoint-s3, gcsfuse): checkpoints are files.
    run_root: str | None = None
    # allow a relative run directory inside a `ray job submit --working-dir` package, which Ray deletes with the
    # session (checkpoints and metrics gone): refused unless this says it is meant
    ephemeral_run_dir: bool = False


class EvalConfig(Section):
    metadata: str = "builtin:heldout"
    n_per_prompt: int = Field(1, ge=1)
    steps: Steps = 8


class PretrainConfig(Section):
    steps: int = Field(1500, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    p_uncond: float = Field(0.1, ge=0, le=1)
    log_every: int = Field(50, ge=1)
    out: str = "runs/pretrain/tiny_mdm.safetensors"


class ClusterConfig(Section):
    """The Ray runtime: where actors run and how weights travel. Resources are checked before anything starts."""

    # null: the Ray job's cluster (RAY_ADDRESS) if any, else an embedded local one; "auto" or "HOST:PORT": attach.
    address: str | None = None
    # Embedded cluster's node address. 127.0.0.1: Ray's single-machine mode, every server on loopback only (any
    # other address: Ray's servers listen on every interface and advertise this one).
    node_ip: str = "127.0.0.1"
    num_cpus: int = Field(2, ge=1)  # embedded cluster size
    object_store_mb: int = Field(512, ge=75)
    rollout_workers: int = Field(1, ge=1)
    rollout_cpus: float = Field(1.0, ge=0)
    rollout_gpus: float = Field(0.0, ge=0)
    reward_workers: int = Field(1, ge=1)
    reward_cpus: float = Field(0.0, ge=0)
    reward_gpus: float = Field(0.0, ge=0)
    learner_ranks: int = Field(1, ge=1)
    learner_cpus: float = Field(1.0, ge=0)
    learner_gpus: float = Field(0.0, ge=0)
    # extra custom resources per role, e.g. {"rollout_node": 0.01} to pin roles to labelled nodes
    rollout_resources: dict[str, float] = {}
    reward_resources: dict[str, float] = {}
    learner_resources: dict[str, float] = {}
    # Ray runtime_env of the reward workers, e.g. {"pip": [...]} for a reward whose package pins other versions
    # than the trainer's (ImageReward: see the README)
    reward_runtime_env: dict[str, Any] = {}
    zero_stage: int = Field(1, ge=0, le=3)
    # collective: bucketed broadcast over a group of learner rank 0 + rollout workers (gloo/NCCL);
    # object_store: numpy arrays through Ray's object store (the fallback)
    weight_sync: Literal["collective", "object_store"] = "collective"
    max_staleness: int = Field(0, ge=0, le=1)
    timeout_s: float = Field(600.0, gt=0)
    # faults: Ray restarts a dead rollout or reward worker this many times (its lost calls are issued again); a
    # reward call is declared hung after reward_timeout_s (its worker is restarted), and a hung or failed call is
    # retried reward_retries times before its samples are left unscored
    max_restarts: int = Field(3, ge=0)
    reward_timeout_s: float = Field(300.0, gt=0)
    reward_retries: int = Field(1, ge=0)


class MetricsConfig(Section):
    """The driver's Prometheus endpoint (`/metrics`), for runs without Ray's metrics export. It binds the loopback
    address unless `host` says otherwise: metrics name prompts' rewards and the cluster's layout, so exposing them
    to the network is a choice, not a default."""

    port: int | None = Field(None, ge=0, le=65535)  # null: no endpoint; 0: any free port (the log names it)
    host: str = "127.0.0.1"


