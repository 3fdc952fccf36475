"""The weight channel without Ray: the collective transport (two threads, a real gloo group on loopback), the
object-store transport's strict load and a rollout worker's weight-version check."""

import os
import socket
import threading

import pytest
import torch

from cogrpo.cluster.ray.actors import RolloutWorker
from cogrpo.cluster.ray.pool import WeightsMissing
from cogrpo.cluster.ray.weights import (BroadcastGroup, WeightSyncError, buckets, connect_store, host_store,
                                        layout_signature, load_named_state, named_state, pin_gloo_to, to_numpy)
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
    grouped = buckets(state, bucket_bytes=1024)
    assert sorted(n for b in grouped for n in b) == sorted(state)
    for bucket in grouped:
        assert len({state[n].dtype for n in bucket}) == 1
        assert len(bucket) == 1 or sum(state[n].numel() * state[n].element_size() for n in bucket) <= 1024


def test_broadcast_delivers_every_value_and_the_version_in_place():
    sender, receiver = _pair()
    sent, inbox = _state(1), _state(2)
    live = inbox["model.b"]
    result = {}
    t = threading.Thread(target=lambda: result.update(version=receiver.receive(inbox)))
    t.start()
    sender.send(7, sent)
    t.join()
    assert result["version"] == 7
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


def test_the_object_store_transport_loads_strictly_and_bf16_travels_exactly(worker):
    """Object store: a message of another architecture is refused naming the tensor (load_state_dict, strict);
    bf16 tensors travel as float32 and load back bit for bit."""
    message = to_numpy(named_state(worker.model, worker.policy))
    name = next(k for k, v in message.items() if k.startswith("model.") and v.ndim == 2)
    wrong = {**message, name: message[name][:, :-1]}
    with pytest.raises(RuntimeError, match=f"size mismatch for {name[len('model.'):]}"):
        load_named_state(worker.model, worker.policy, wrong)
    missing = {k: v for k, v in message.items() if k != name}
    with pytest.raises(RuntimeError, match="Missing key"):
        load_named_state(worker.model, worker.policy, missing)
    bf16 = torch.randn(4, 3).bfloat16()
    assert torch.equal(torch.as_tensor(to_numpy({"x": bf16})["x"]).bfloat16(), bf16)


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
