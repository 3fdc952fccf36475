"""Peak memory of one theta update against the number of trained steps, the replay chunk and activation
checkpointing, on the CPU, with an aMUSEd-256-sized transformer of random weights (UVit2D at aMUSEd's width 1024,
16x16 tokens over its 8,192-code codebook, guidance on as aMUSEd samples; `--layers` of its 22 blocks, the time a
CPU can give). Each case runs in a fresh process: a warm-up update allocates the optimiser's state, then the
measured update's resident memory is sampled every 0.5 ms above the level it started from (large blocks are
mmap-ed, so freed memory leaves the count at once). Then, with the arithmetic written out, the peak of each
shipped GPU config against its card.

    .venv/bin/python benchmarks/learner_memory.py [--steps 4,8,16] [--layers 2]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import string
import subprocess
import sys
import threading
import time

CASES = ({"chunk": 0, "checkpointing": False}, {"chunk": 2, "checkpointing": False},
         {"chunk": 2, "checkpointing": True})
GPU_CONFIGS = ("configs/amused-1gpu.yaml", "configs/smoke-1gpu.yaml", "configs/sd3-1gpu.yaml",
               "configs/meissonic-8gpu.yaml", "configs/meissonic-multinode.yaml", "configs/flux-8gpu.yaml",
               "configs/llada-8gpu.yaml")
TOKENS, CODEBOOK, HIDDEN, GUIDANCE, BATCH = 256, 8192, 256, 9.0, 2


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build_model(layers: int):
    """aMUSEd's AmusedModel around a UVit2D of aMUSEd-256's width, codebook and grid, with a tiny VQ-GAN and CLIP
    text tower (they are frozen tools outside the update)."""
    from diffusers import UVit2DModel, VQModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    from cogrpo.models.amused import AmusedModel, ClipText

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({piece: i + 2 for i, piece in enumerate([*string.ascii_lowercase,
                                                          *(c + "</w>" for c in string.ascii_lowercase)])})
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=8)
    text = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=8, projection_dim=16, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    vq = VQModel(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                 up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, num_vq_embeddings=CODEBOOK,
                 vq_embed_dim=4, norm_num_groups=4, lookup_from_codebook=True)
    transformer = UVit2DModel(hidden_size=HIDDEN, in_channels=HIDDEN, block_out_channels=HIDDEN, num_res_blocks=1,
                              block_num_heads=4, num_attention_heads=4, intermediate_size=HIDDEN * 11 // 4,
                              num_hidden_layers=layers, encoder_hidden_size=32, cond_embed_dim=16,
                              sample_size=int(TOKENS ** 0.5))
    return AmusedModel(transformer, vq, ClipText(text, tokenizer), mask_token_id=CODEBOOK + 63)


def run_case(steps: int, chunk: int, checkpointing: bool, layers: int) -> dict:
    import torch

    from cogrpo.learner.learner import Learner, ScoredBatch
    from cogrpo.models.activations import enable_activation_checkpointing
    from cogrpo.models.schedule_policy import PolicySchedule, SchedulePolicy
    from cogrpo.proto.config import AlgoConfig, Config, SamplerConfig
    from cogrpo.rollout.masked_image.family import MaskedImageFamily
    from cogrpo.rollout.steps import full_plan

    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = build_model(layers)
    config = Config(sampler=SamplerConfig(steps=steps, guidance=GUIDANCE),
                    algo=AlgoConfig(mode="grpo", minibatch=BATCH, lr=1e-6, replay_chunk=chunk))
    family = MaskedImageFamily(config)
    encoder = family.schedule_encoder(model, config.schedule_policy)
    policy = SchedulePolicy(config.schedule_policy, family.knobs, encoder)
    traj = family.sample(model, ["a dog", "a cat"], PolicySchedule(policy, family.hand_schedule(steps)),
                         full_plan(steps), 0)
    if checkpointing:
        enable_activation_checkpointing(model)
    learner = Learner(model, policy, config, family)
    batch = ScoredBatch(traj, torch.tensor([1.0, -1.0]), torch.ones(BATCH, dtype=torch.bool),
                        torch.ones(BATCH, steps, dtype=torch.bool))
    learner.update(batch, 0)  # allocates AdamW's state
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    start, peak, running = resident_bytes(), [0], [True]

    def sample() -> None:
        while running[0]:
            peak[0] = max(peak[0], resident_bytes())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    began = time.perf_counter()
    learner.update(batch, 1)
    seconds = time.perf_counter() - began
    running[0] = False
    sampler.join()
    return {"steps": steps, "chunk": chunk, "checkpointing": checkpointing, "layers": layers,
            "peak_mb": round((peak[0] - start) / 2**20, 1), "seconds": round(seconds, 2)}


def measured(steps: int, chunk: int, checkpointing: bool, layers: int) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, __file__, "--case", json.dumps([steps, chunk, checkpointing, layers])],
                         env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


GB = 1e9
CARD_GB = 80  # the configs' GPUs: A100 / H100 80 GB
# (trained parameters, frozen ones the learner also holds, blocks, width, tokens per sample, of which scored,
#  codebook or vocabulary (0: a flow model)). aMUSEd's transformer and FLUX's are counted on the meta device
#  (diffusers' UVit2DModel(sample_size=16), FluxTransformer2DModel()); T5-XXL's encoder likewise (4.76B); CLIP-L's
#  text tower 0.12B; the others are their papers' and model cards' figures; VQ-GANs and VAEs at most 0.2B.
MODELS = {"amused": (0.60e9, 0.12e9 + 0.2e9, 22, 1024, 256, 256, 8192),
          "meissonic": (1.0e9, 0.35e9 + 0.2e9, 42, 1024, 4096, 4096, 8192),
          "sd3": (2.5e9, 4.76e9 + 0.12e9 + 0.69e9 + 0.2e9, 24, 1536, 1024 + 333, 0, 0),
          "flux": (11.9e9, 4.76e9 + 0.12e9 + 0.2e9, 57, 3072, 2025 + 512, 0, 0),
          "llada": (8.0e9, 0.0, 32, 4096, 512, 256, 126464),
          "tiny_mdm": (1e6, 0.0, 4, 128, 76, 64, 64)}
REWARD_PARAMS = {"hps": 1.0e9, "clip": 0.43e9, "image_reward": 0.45e9, "shapes": 0.0}
ACTIVATION_BYTES = 34  # per token, layer and unit of width in 16-bit (Korthikanti et al. 2022, no attention scores)


def estimate(path: str, plain: bool = False) -> dict:
    """A learner rank's peak on its card from the config: ZeRO's accounting of bf16 weights and gradients with
    fp32 master weights and Adam moments (the latter in host memory with offload_optimizer), the frozen reference
    for a KL term, the frozen encoders, the activations and logits of one replay block; a config whose roles
    share one GPU also carries the rollout's copy of the model and the rewards. plain: without the memory
    settings (no replay chunks, no checkpointing, no offload), what they save."""
    from cogrpo.proto.config import load_config

    config = load_config(path)
    if plain:
        config = config.model_copy(update={
            "algo": config.algo.model_copy(update={"replay_chunk": 0, "activation_checkpointing": False}),
            "cluster": config.cluster.model_copy(update={"offload_optimizer": False})})
    algo, cluster = config.algo, config.cluster
    trained, frozen, blocks, width, tokens, scored, vocab = MODELS[config.model.kind]
    ranks, stage = cluster.learner_ranks, cluster.zero_stage
    host = 0 if cluster.offload_optimizer else 12  # fp32 master weights and Adam's two moments, per parameter
    states = {1: 4 * trained + host * trained / ranks, 2: 2 * trained + (2 + host) * trained / ranks,
              3: (4 + host) * trained / ranks}[stage]
    fixed = states + 2 * frozen + (2 * trained if algo.kl_beta > 0 else 0)
    steps = {"all": config.sampler.steps, "window": algo.steps.window}.get(algo.steps.mode, config.sampler.steps)
    steps = 1 if algo.theta_likelihood != "trajectory" and vocab else steps
    pairs = -(-algo.minibatch // ranks) * steps  # a rank's share of a minibatch
    rows = min(algo.replay_chunk or pairs, pairs) * (2 if config.sampler.guidance > 0 else 1)
    layers_kept = (2 * blocks + ACTIVATION_BYTES) if algo.activation_checkpointing else ACTIVATION_BYTES * blocks
    activations = rows * tokens * width * layers_kept
    logits = rows * scored * vocab * (2 + 3 * 4 / (2 if config.sampler.guidance > 0 else 1))
    shared = 0.0
    if (cluster.learner_gpus or 0) < 1:
        shared = 2 * (trained + frozen) + 2 * sum(REWARD_PARAMS.get(r.kind, 0.5e9) for r in config.rewards)
    total = fixed + activations + logits + shared
    return {"config": path, "states_gb": round(fixed / GB, 1), "activations_gb": round(activations / GB, 1),
            "logits_gb": round(logits / GB, 1), "shared_gb": round(shared / GB, 1), "total_gb": round(total / GB, 1),
            "card_share": round(total / (CARD_GB * GB), 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", default="4,8,16")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(*json.loads(args.case))))
        return
    steps = [int(s) for s in args.steps.split(",")]
    rows = [measured(s, case["chunk"], case["checkpointing"], args.layers) for case in CASES for s in steps]
    print(f"{'chunk':>5} {'ckpt':>5} {'steps':>5} {'peak MB':>9} {'s':>7}")
    for row in rows:
        print(f"{row['chunk']:>5} {str(row['checkpointing']):>5} {row['steps']:>5} {row['peak_mb']:>9} "
              f"{row['seconds']:>7}")
    flatness = {}
    for case in CASES:
        peaks = [r["peak_mb"] for r in rows if r["chunk"] == case["chunk"]
                 and r["checkpointing"] == case["checkpointing"]]
        key = f"chunk={case['chunk']},ckpt={case['checkpointing']}"
        flatness[key] = round(peaks[-1] / peaks[0], 3)
        print(f"{key}: peak at {steps[-1]} steps / at {steps[0]} steps = {flatness[key]}")
    configs = [{**estimate(path), "plain_gb": estimate(path, plain=True)["total_gb"]} for path in GPU_CONFIGS]
    print(f"{'config':<34} {'states':>7} {'activ.':>7} {'logits':>7} {'shared':>7} {'total GB':>9} {'of card':>8} "
          f"{'plain GB':>9}")
    for row in configs:
        print(f"{row['config']:<34} {row['states_gb']:>7} {row['activations_gb']:>7} {row['logits_gb']:>7} "
              f"{row['shared_gb']:>7} {row['total_gb']:>9} {row['card_share']:>8.0%} {row['plain_gb']:>9}")
    print(json.dumps({"rows": rows, "flatness": flatness, "configs": configs}))


if __name__ == "__main__":
    main()
