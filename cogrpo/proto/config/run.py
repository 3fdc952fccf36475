"""The run's config: iterations, evaluation and checkpoint cadence, pretraining, the Ray cluster, metrics."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from cogrpo.proto.config.base import Section, Steps


class TrainConfig(Section):
    iterations: int = Field(60, ge=1)
    # RL prompts: null = the generated train split (no held-out composition), or a prompt file (GenEval metadata or
    # prompt JSONL, or .txt with one prompt a line: cogrpo/data/records.py)
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
    # ZeRO-Offload: the learner ranks keep the fp32 master weights and Adam's moments in host memory and step them
    # there (12 of the 16 bytes per parameter leave the GPU; stage 1 or more)
    offload_optimizer: bool = False
    # collective: bucketed broadcast over a group of learner rank 0 + rollout workers (gloo/NCCL);
    # object_store: numpy arrays through Ray's object store (the fallback); cuda_ipc: learner rank 0 and the rollout
    # workers on one GPU, which copy from the learner's shared buffers device to device
    weight_sync: Literal["collective", "object_store", "cuda_ipc"] = "collective"
    max_staleness: int = Field(0, ge=0, le=1)
    timeout_s: float = Field(600.0, gt=0)
    # faults: Ray restarts a dead rollout or reward worker this many times (its lost calls are issued again); a
    # reward call is declared hung after reward_timeout_s (its worker is restarted), and a hung or failed call is
    # retried reward_retries times before its samples are left unscored
    max_restarts: int = Field(3, ge=0)
    reward_timeout_s: float = Field(300.0, gt=0)
    reward_retries: int = Field(1, ge=0)

    @model_validator(mode="after")
    def _offload_needs_zero(self) -> ClusterConfig:
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3 (ZeRO-Offload partitions the optimizer)")
        return self


class SimulateConfig(Section):
    """A simulated cluster for capacity planning (docs/simulation.md): every actor, call, retry, weight message and
    metric is real, but the model's passes are waits (no CPU) sized by this cost model, in seconds on one GPU;
    rewards are drawn. The defaults estimate Meissonic-1B at 1024 px on H100s (benchmarks/simulated_cluster.py)."""

    rollout_s_per_image_step: float = Field(0.010, gt=0, le=60)  # one decoding step of one image, guidance included
    # one trained (sample, step) replayed with gradients: forward and backward (a replay without them waits a third)
    learner_s_per_sample_step: float = Field(0.040, gt=0, le=600)
    reward_s_per_image: float = Field(0.010, ge=0, le=60)  # one reward term scoring one image
    # one worker stands for this many GPUs: its waits are divided by it (calls run one at a time, so its batches
    # take as long in all as they would on that many GPUs; a rollout worker's own work is shared alike)
    gpus_per_rollout_worker: int = Field(1, ge=1, le=1024)
    gpus_per_reward_worker: int = Field(1, ge=1, le=1024)
    gpus_per_learner_rank: int = Field(1, ge=1, le=1024)
    tokens: int = Field(4096, ge=1, le=65536)  # positions a sample decodes: the size of its trajectory
    # the model-sized buffer theta holds, which every publish moves (Meissonic's 2 GB of bf16 weights / 16)
    weights_mb: float = Field(128.0, gt=0, le=65536)
    # rewards: a prompt's mean drawn around 0.5 with this spread, each sample's score around it with this noise;
    # this share of prompts scores all its samples alike (a group with zero variance, as too hard or too easy)
    prompt_spread: float = Field(0.2, ge=0, le=10)
    noise: float = Field(0.1, ge=0, le=10)
    zero_variance: float = Field(0.25, ge=0, le=1)


class MetricsConfig(Section):
    """The driver's Prometheus endpoint (`/metrics`), for runs without Ray's metrics export. It binds the loopback
    address unless `host` says otherwise: metrics name prompts' rewards and the cluster's layout, so exposing them
    to the network is a choice, not a default. `tensorboard` also writes the run's rows as TensorBoard event files
    in the run directory, for those who read runs there (needs the `tensorboard` extra)."""

    port: int | None = Field(None, ge=0, le=65535)  # null: no endpoint; 0: any free port (the log names it)
    host: str = "127.0.0.1"
    tensorboard: bool = False


