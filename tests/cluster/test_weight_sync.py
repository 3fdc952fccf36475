"""The weight channel without Ray: the collective transport (two threads, a real gloo group on loopback), the
object-store message's checked load, the CUDA IPC transport (two processes on one GPU) and its refusal elsewhere,
and a rollout worker's weight-version check."""

import os
import socket
import threading

import pytest
import ray
import torch
import torch.multiprocessing as mp

from cogrpo.cluster.loop import trainer
from cogrpo.cluster.ray.actors import RolloutWorker
from cogrpo.cluster.ray.flat import (CudaMapped, CudaShare, ObjectMessage, WeightSyncError, buckets,
                                     check_colocated, layout_signature)
from cogrpo.cluster.ray.pool import WeightsMissing
from cogrpo.cluster.ray.weights import BroadcastGroup, connect_store, host_store, named_state, pin_gloo_to
from cogrpo.proto.errors import InputError
from cogrpo.rollout.steps import full_plan


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"model.a": torch.randn(300, generator=g), "model.b": torch.randn(20, 10, generator=g),
            "model.steps": torch.randint(0, 9, (5,), generator=g), "policy.w": torch.randn(7, generator=g)}


def _pair(timeout_s: float = 20.0, bucket_bytes: int = 1024) -> tuple[BroadcastGroup, BroadcastGroup]:
    store = host_store("127.0.0.1", timeout_s)
    groups: dict[int, BroadcastGroup] = {}

    def join(rank: int) -> None:
        s = store if rank == 0 else connect_store("127.0.0.1", store.port, timeout_s)
        groups[rank] = BroadcastGroup(s, rank, 2, "127.0.0.1", timeout_s, bucket_bytes)

    threads = [threading.Thread(target=join, args=(r,)) for r in (0, 1)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return groups[0], groups[1]


def test_buckets_respect_dtype_and_size_and_cover_every_tensor_once():
    state = _state(0)
    for alone in (4096, 1000):
        grouped = buckets(state, bucket_bytes=1024, alone_bytes=alone)
        assert sorted(n for b in grouped for n in b) == sorted(state)
        for bucket in grouped:
            assert len({state[n].dtype for n in bucket}) == 1
            assert len(bucket) == 1 or sum(state[n].numel() * state[n].element_size() for n in bucket) <= 1024
    assert ["model.a"] in buckets(state, bucket_bytes=2**20, alone_bytes=1000)  # 1200 bytes: a bucket by itself


def test_broadcast_delivers_every_value_and_the_version_in_place():
    """Twice over the same group: the second publish reuses both sides' staging buffers and delivers its own
    values. With 1 KB buckets the message has buckets of one tensor (straight into it) and packed ones."""
    sender, receiver = _pair()
    inbox = _state(2)
    live = inbox["model.b"]
    for version, seed in ((7, 1), (8, 3)):
        sent, result = _state(seed), {}
        t = threading.Thread(target=lambda: result.update(version=receiver.receive(inbox)))
        t.start()
        sender.send(version, sent)
        t.join()
        assert result["version"] == version
        for name in sent:
            assert torch.equal(inbox[name], sent[name]), name
    assert inbox["model.b"] is live  # filled in place: a rollout worker's state_dict views update its model


def test_the_layout_signature_tells_names_shapes_and_dtypes_apart_but_not_values():
    state = _state(1)
    assert layout_signature(state) == layout_signature(_state(2))  # other values, same layout
    renamed = {("model.c" if k == "model.a" else k): v for k, v in state.items()}
    reshaped = {**state, "model.b": state["model.b"].reshape(10, 20)}
    retyped = {**state, "model.a": state["model.a"].double()}
    for changed in (renamed, reshaped, retyped):
        assert layout_signature(changed) != layout_signature(state)


@pytest.mark.parametrize("change", ["size", "shape", "dtype"])
def test_an_architecture_mismatch_is_named(change):
    sender, receiver = _pair()
    inbox = _state(2)
    if change == "size":
        inbox["model.a"] = torch.zeros(299)
    elif change == "shape":
        inbox["model.b"] = torch.zeros(10, 20)  # same number of values, another layout
    else:
        inbox["model.a"] = torch.zeros(300, dtype=torch.float64)  # same values count and shapes, another dtype
    errors = []

    def receive():
        try:
            receiver.receive(inbox)
        except WeightSyncError as exc:
            errors.append(str(exc))

    t = threading.Thread(target=receive)
    t.start()
    with pytest.raises(WeightSyncError, match="a rollout worker's tensors do not match the learner's"):
        sender.send(1, _state(1))
    t.join()
    assert errors and "do not match this worker's" in errors[0] and "different architectures" in errors[0]


def test_a_silent_sender_ends_in_a_clear_timeout():
    _, receiver = _pair(timeout_s=2.0)
    with pytest.raises(WeightSyncError, match="weight sync failed while receiving the header .*timeout 2 s"):
        receiver.receive(_state(2))


def test_the_rendezvous_store_listens_on_its_host_alone():
    """TCPStore alone would listen on every interface; bound to 127.0.0.1, the same port on 127.0.0.2 (also
    loopback on Linux) refuses, while clients on the host itself get through."""
    store = host_store("127.0.0.1", 10.0)
    connect_store("127.0.0.1", store.port, 10.0).set("key", "value")
    assert store.get("key") == b"value"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", store.port), timeout=5).close()


@pytest.mark.skipif(not any(name == "lo" for _, name in socket.if_nameindex()), reason="no interface named lo")
@pytest.mark.parametrize("host, interface", [("127.0.0.1", "lo"), ("127.0.0.2", "lo"), ("198.51.100.7", None)])
def test_gloo_is_pinned_to_the_interface_holding_the_node_address(monkeypatch, host, interface):
    """The learners' gloo group follows GLOO_SOCKET_IFNAME: the interface whose network holds the node's Ray address
    (127.0.0.2 is loopback too); an address no interface holds (a documentation range) leaves gloo's default."""
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    pin_gloo_to(host)
    assert os.environ.get("GLOO_SOCKET_IFNAME") == interface


def test_a_gloo_interface_the_user_named_is_kept(monkeypatch):
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth7")
    pin_gloo_to("127.0.0.1")
    assert os.environ["GLOO_SOCKET_IFNAME"] == "eth7"


@pytest.fixture
def worker(tiny):
    """A rollout worker of the tiny run, built in this process (no Ray)."""
    return RolloutWorker(tiny())


def test_the_object_store_message_loads_in_place_and_bf16_travels_exactly(worker):
    """A rollout worker's own weights survive the message bit for bit, bf16 included (as its raw bits), and land
    in the live tensors."""
    sent = {**named_state(worker.model, worker.policy), "model.half": torch.randn(4, 3).bfloat16()}
    sent = {k: v + 1 if v.is_floating_point() else v for k, v in sent.items()}
    inbox = {**named_state(worker.model, worker.policy), "model.half": torch.zeros(4, 3, dtype=torch.bfloat16)}
    live = dict(inbox)
    assert ObjectMessage.of(5, sent).load_into(inbox) == 5
    for name in sent:
        assert torch.equal(inbox[name], sent[name]) and inbox[name] is live[name], name


@pytest.mark.parametrize("change", ["size", "shape", "dtype"])
def test_the_object_store_message_refuses_another_architecture(change):
    inbox = _state(2)
    if change == "size":
        inbox["model.a"] = torch.zeros(299)
    elif change == "shape":
        inbox["model.b"] = torch.zeros(10, 20)
    else:
        inbox["model.a"] = torch.zeros(300, dtype=torch.float64)
    before = {k: v.clone() for k, v in inbox.items()}
    with pytest.raises(WeightSyncError, match=r"do not match this worker's \(\d+ values\): different architectures"):
        ObjectMessage.of(1, _state(1)).load_into(inbox)
    assert all(torch.equal(inbox[k], before[k]) for k in inbox)  # nothing was loaded


def _refusal(places) -> str:
    with pytest.raises(InputError) as caught:
        check_colocated(places)
    return str(caught.value)


def test_cuda_ipc_is_refused_in_one_line_without_cuda_or_a_shared_gpu():
    """places: learner rank 0's, then each rollout worker's (node id, GPU ids), None without CUDA."""
    refusals = [_refusal([("node", ("0",)), None]), _refusal([("node", ("0",)), ("node", ("0",)), ("node", ("1",))]),
                _refusal([("node", ("0",)), ("other", ("0",))])]
    assert "needs CUDA, and rollout worker 0 has none" in refusals[0]
    assert "one GPU of one node; rollout worker 1 has GPUs ['1'] of node node" in refusals[1]
    assert "rollout worker 0 has GPUs ['0'] of node other" in refusals[2]
    assert all("\n" not in line for line in refusals)
    check_colocated([("node", ("0",)), ("node", ("0",))])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the refusal needs one without")
def test_cuda_ipc_is_refused_at_start_on_a_cluster_without_cuda(tmp_path, tiny):
    config = tiny("runtime=ray", "sampler.batch_size=4", "train.eval_at_start=false", "cluster.weight_sync=cuda_ipc",
                  "cluster.rollout_cpus=0.5", "cluster.learner_cpus=0.5")
    try:
        with pytest.raises(InputError, match="^cluster.weight_sync: cuda_ipc needs CUDA, and learner rank 0 has none"):
            trainer(config, str(tmp_path / "run"), log=lambda line: None)
    finally:
        ray.shutdown()


def _map_and_copy(message, queue) -> None:
    """A second process on the GPU: map the learner's buffers, load them into zeros, send the values back."""
    inbox = {k: torch.zeros_like(v, device="cuda") for k, v in _state(0).items()}
    version = CudaMapped().load(message, inbox)
    queue.put((version, {k: v.cpu() for k, v in inbox.items()}))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA IPC needs a CUDA GPU")
def test_cuda_ipc_delivers_every_value_device_to_device():
    share, sent = CudaShare(), {k: v.cuda() for k, v in _state(1).items()}
    context = mp.get_context("spawn")
    for version in (3, 4):  # the second publish reuses the shared buffers
        sent = {k: v + 1 if v.is_floating_point() else v for k, v in sent.items()}
        queue = context.Queue()
        child = context.Process(target=_map_and_copy, args=(share.publish(version, sent), queue))
        child.start()
        got, values = queue.get(timeout=120)
        child.join()
        assert got == version and all(torch.equal(values[k], sent[k].cpu()) for k in sent)


def test_a_rollout_worker_refuses_to_sample_with_another_weight_version(worker):
    """A worker Ray restarted holds no version (or an old one): sampling would use the wrong weights, so it raises
    WeightsMissing, which the driver answers by sending the current weights."""
    with pytest.raises(WeightsMissing, match="holds weight version None, the driver expects 1"):
        worker.generate(["a red circle"], full_plan(4), 0, 0, version=1)
    worker.version = 2
    with pytest.raises(WeightsMissing, match="holds weight version 2, the driver expects 3"):
        worker.generate(["a red circle"], full_plan(4), 0, 0, version=3)
    _, _, version = worker.generate(["a red circle"], full_plan(4), 0, 0, version=2)
    assert version == 2
