"""One rule, in every runtime, for the order of an iteration's samples, their batches and each batch's seed: the
same prompts, batches and seeds give the same samples wherever they are generated."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Slice:
    """Batch `index` of a list of samples: samples[start:stop], generated with `seed`."""

    index: int
    start: int
    stop: int
    seed: int


def rollout_seed(seed: int, iteration: int, batch: int) -> int:
    return (seed * 1_000_003 + iteration * 1_009 + batch) % (2**62)


def derived_seed(seed: int, index: int) -> int:
    """The seed of a batch's index-th derived draw (an estimator's or objective's per-epoch inputs), in range."""
    return (seed * 1009 + index) % (2**62)


def slices(samples: int, batch_size: int, seed: int, iteration: int | None) -> list[Slice]:
    """`samples` in batches of batch_size. An iteration's rollouts seed batch k with rollout_seed(seed, iteration,
    k); an evaluation (iteration None) with seed + k, so its results depend on nothing else."""
    return [Slice(k, start, min(start + batch_size, samples),
                  seed + k if iteration is None else rollout_seed(seed, iteration, k))
            for k, start in enumerate(range(0, samples, batch_size))]


def repeat_each(items: list, n: int) -> list:
    """Each item n times in a row: the order every sample list follows (sample k belongs to item k // n)."""
    return [item for item in items for _ in range(n)]
