"""The Ray runtime against the single-process trainer, on an embedded cluster and on two loopback nodes."""

import os
import threading
from pathlib import Path

import numpy as np
import psutil
import pytest
import ray

from cogrpo.cluster.compat import ray_cluster_flag
from cogrpo.cluster.loop import trainer
from cogrpo.cluster.ray.connect import SINGLE_MACHINE_ENV, connect, return_to
from cogrpo.cluster.ray.learner import usable_batches
from cogrpo.cluster.ray.weights import named_state, to_numpy
from cogrpo.proto.errors import FaultError, InputError

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


RAY = ["runtime=ray", "sampler.batch_size=4", "train.eval_at_start=false"]
LOOPBACK_ADDRESSES = {"127.0.0.1", "::ffff:127.0.0.1"}  # as a listening socket reports 127.0.0.1


def cluster_listeners() -> set[str]:
    """The addresses the processes this test started (Ray's GCS, raylet, agents, workers and actors) listen on."""
    listening = set()
    for process in psutil.Process().children(recursive=True):
        try:
            listening |= {c.laddr.ip for c in process.net_connections("inet") if c.status == psutil.CONN_LISTEN}
        except psutil.NoSuchProcess:
            pass
    return listening


@pytest.fixture
def local_ray():
    yield
    ray.shutdown()


def test_distributed_run_matches_the_single_process_trainer(tmp_path, tiny, eval_file, local_ray, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "jit"))  # the actors inherit it with the cluster
    config = tiny(*RAY, "algo.update=joint", "algo.kl_beta=0.04", "algo.lr_decay=cosine", "cluster.rollout_workers=2",
                  "cluster.rollout_cpus=0.5", "cluster.learner_cpus=0.5", "algo.rollouts_per_prompt=6",
                  "algo.candidate_prompts=3", "algo.ema_decay=0.5",
                  f"train.eval_metadata={{heldout: {eval_file}, again: {eval_file}}}")
    local = trainer(config.model_copy(update={"runtime": "local"}), str(tmp_path / "local"), log=lambda line: None)
    local.fit()
    dist = trainer(config, str(tmp_path / "ray"), log=lambda line: None)
    dist.fit()
    for a, b in zip(local.run.metrics, dist.run.metrics):
        for key in ("reward/shapes_strict", "reward/shapes_partial", "adv_std", "usable"):
            assert a[key] == b[key], key  # identical rollouts: same weights, batches and seeds
        for key in ("loss_theta", "loss_phi", "kl_ref"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    assert dist.run.metrics[-1]["weight_version"] == 2
    assert len(dist.run.evals) == 2  # two splits at one weight version: the second evaluates the cached average
    for a, b in zip(local.run.evals, dist.run.evals, strict=True):
        assert a["overall"] == b["overall"] and a["by_task"] == b["by_task"]  # theta's average, evaluated
        for key in ("reward/shapes_strict", "reward/shapes_partial"):  # scored by the reward workers, batch by batch
            assert a[key] == b[key], key
    published = ray.get(dist.runtime.rollouts[1].weights.remote())
    mine = to_numpy(named_state(local.runtime.model, local.runtime.policy))
    for name, value in mine.items():
        np.testing.assert_allclose(published[name], value, atol=1e-5, err_msg=name)
    assert not (tmp_path / "jit").exists(), "the learner JIT-compiled a DeepSpeed op"


def test_the_embedded_cluster_listens_on_loopback_only(tiny, local_ray):
    """Security default: no process of the embedded cluster accepts connections from another machine (on Linux Ray
    would advertise the network address and listen on every interface), and what made it so does not outlive
    ray.init(), which a multi-node cluster started later from the same process would inherit."""
    mode_before = ray_cluster_flag()
    connect(tiny("runtime=ray"))
    assert ray.get(ray.remote(ray.util.get_node_ip_address).remote()) == "127.0.0.1"
    listening = cluster_listeners()
    assert listening and listening <= LOOPBACK_ADDRESSES, listening
    assert SINGLE_MACHINE_ENV not in os.environ and ray_cluster_flag() == mode_before


def test_the_driver_returns_to_its_working_directory_once_it_is_back(tmp_path, monkeypatch):
    """ray.init() in a `ray job submit` driver can delete the job's working directory and unpack it again."""
    monkeypatch.chdir(tmp_path)
    later = tmp_path / "working_dir"
    threading.Timer(0.3, later.mkdir).start()
    return_to(str(later), timeout_s=30)
    assert Path.cwd() == later
    with pytest.raises(FaultError, match="did not come back within cluster.timeout_s 0.2 s"):
        return_to(str(tmp_path / "gone"), timeout_s=0.2)


def test_learner_ranks_fetch_the_batches_holding_usable_samples_and_the_first():
    sizes = [4, 4, 4, 4]
    usable = np.array([0, 0, 0, 0, 1, 1, 0, 1, 0, 0, 0, 0, 0, 1, 1, 0], dtype=bool)  # batch 2 left out, as PODS may
    needed, rows = usable_batches(sizes, usable)
    assert list(needed) == [0, 1, 3]  # batch 0 for its seed, which the learner's shuffles derive from
    assert list(rows) == [*range(0, 8), *range(12, 16)]
    needed, rows = usable_batches(sizes, np.zeros(16, dtype=bool))
    assert list(needed) == [0] and list(rows) == [0, 1, 2, 3]


def test_a_request_the_cluster_cannot_satisfy_fails_at_once(tmp_path, tiny, local_ray):
    config = tiny(*RAY, "cluster.learner_gpus=1")
    with pytest.raises(InputError, match="1 GPU needed, 0 in the cluster"):
        trainer(config, str(tmp_path / "run"), log=lambda line: None)


@pytest.mark.parametrize("stage, transport", [(2, "object_store"), (3, "collective")])
def test_zero_stages_with_two_learner_ranks_update_and_sync(tmp_path, tiny, local_ray, stage, transport):
    config = tiny(*RAY, "train.iterations=1", f"cluster.zero_stage={stage}", f"cluster.weight_sync={transport}",
                  "cluster.learner_ranks=2", "cluster.learner_cpus=0.5", "cluster.rollout_cpus=0.5",
                  "algo.update=joint")
    loop = trainer(config, str(tmp_path / f"zero{stage}"), log=lambda line: None)
    learners, rollouts = loop.runtime.learners, loop.runtime.rollouts

    def count_full_state_gathers(worker) -> None:  # runs in each learner actor (nested: pickled by value)
        import deepspeed

        gather = deepspeed.zero.GatheredParameters
        worker.gathers = 0

        def counted(params, modifier_rank=None, enabled=True, **kwargs):
            worker.gathers += enabled
            return gather(params, modifier_rank=modifier_rank, enabled=enabled, **kwargs)

        deepspeed.zero.GatheredParameters = counted

    ray.get([w.__ray_call__.remote(count_full_state_gathers) for w in learners])
    loop.fit()
    assert cluster_listeners() <= LOOPBACK_ADDRESSES  # Ray's servers, the rendezvous stores, both gloo groups
    row = loop.run.metrics[0]
    # ZeRO-3 gathers the full state once for the moving average and the publish after it, once for the checkpoint
    gathers = ray.get([w.__ray_call__.remote(lambda worker: worker.gathers) for w in learners])
    assert gathers == ([2, 2] if stage == 3 else [0, 0])
    assert row["train_theta"] and np.isfinite(row["loss_theta"]) and row["weight_version"] == 1
    assert (tmp_path / f"zero{stage}" / "checkpoints" / "iter_000001" / "model.safetensors").is_file()
    learned = ray.get([w.weights.remote() for w in learners])[0]
    received = ray.get(rollouts[0].weights.remote())
    assert received["model.head.weight"].shape == learned["model.head.weight"].shape  # full, not a ZeRO-3 shard
    for name in learned:
        np.testing.assert_array_equal(received[name], learned[name], err_msg=name)


def test_two_nodes_rollout_and_learner_apart_with_weights_synced(tmp_path, tiny):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"learner_node": 1}, "node_ip_address": "127.0.0.2",
        "include_dashboard": False, "object_store_memory": 200 * 2**20})
    cluster.add_node(num_cpus=1, resources={"rollout_node": 1}, node_ip_address="127.0.0.3",
                     object_store_memory=200 * 2**20)
    try:
        config = tiny(*RAY, "train.iterations=1", f"cluster.address={cluster.address}",
                      "cluster.rollout_resources={rollout_node: 0.01}",
                      "cluster.learner_resources={learner_node: 0.01}", "cluster.rollout_cpus=0.5",
                      "cluster.learner_cpus=0.5")
        loop = trainer(config, str(tmp_path / "run"), log=lambda line: None)
        rollout_node = ray.get(loop.runtime.rollouts[0].ready.remote())
        learner_node = ray.get(loop.runtime.learners[0].ready.remote())
        nodes = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
        assert nodes[rollout_node] == "127.0.0.3" and nodes[learner_node] == "127.0.0.2"
        loop.fit()
        published = ray.get(loop.runtime.learners[0].weights.remote())
        received = ray.get(loop.runtime.rollouts[0].weights.remote())
        assert published.keys() == received.keys()
        for name in published:
            np.testing.assert_array_equal(published[name], received[name], err_msg=name)
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_one_step_off_overlaps_rollouts_and_corrects_the_stale_samples(tmp_path, tiny, local_ray):
    config = tiny(*RAY, "train.iterations=3", "cluster.max_staleness=1", "algo.update=joint",
                  "cluster.rollout_cpus=0.5", "cluster.learner_cpus=0.5", "train.eval_every=1")
    loop = trainer(config, str(tmp_path / "run"), log=lambda line: None)
    loop.fit()
    rows = loop.run.metrics
    # the evaluations after iterations 1 and 2 ran while the next iteration's batches were in flight
    assert [e["iteration"] for e in loop.run.evals] == [1, 2, 3]
    assert all(r["reward_failures"] == {"shapes_strict": 0, "shapes_partial": 0} for r in rows)
    assert all(0 <= e["reward/shapes_partial"] <= 1 and e["reward/shapes_strict"] == e["strict"]
               for e in loop.run.evals)
    assert [r["weight_version"] for r in rows] == [1, 2, 3]
    # iteration 1's rollouts ran on version 0 as the learner did; each later batch was launched before the
    # update that precedes it, so it is exactly one version behind, and every sample of it is counted stale
    assert [r["stale_samples"] for r in rows] == [0, rows[1]["images"], rows[2]["images"]]
    assert [r["staleness"] for r in rows] == [0.0, 1.0, 1.0]
    assert all(np.isfinite(r["loss_theta"]) and np.isfinite(r["loss_phi"]) for r in rows)
    # one process runs the same one-step-off: the next rollout first, on the weights before the update
    local = trainer(config.model_copy(update={"runtime": "local"}), str(tmp_path / "local"), log=lambda line: None)
    local.fit()
    for a, b in zip(local.run.metrics, rows, strict=True):
        assert (a["stale_samples"], a["staleness"]) == (b["stale_samples"], b["staleness"])
        for key in ("reward/shapes_strict", "reward/shapes_partial", "adv_std"):
            assert a[key] == b[key], key  # the same stale samples
        for key in ("loss_theta", "loss_phi"):  # the same correction of their staleness
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
