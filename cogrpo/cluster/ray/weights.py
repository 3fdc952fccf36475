"""The weight channel: learner rank 0 -> every rollout worker, one versioned message that holds the model's and the
schedule policy's tensors, and the whole choreography of a publish (`WeightChannel`, on the driver). Three
transports (`cluster.weight_sync`):

- `collective`: a bucketed broadcast over a process group of its own (learner rank 0 is rank 0, rollout workers
  are 1..W; gloo on CPU, NCCL on GPU), separate from the learners' DeepSpeed group. A tensor of 4 MB or more
  travels by itself, from and into the tensor (no copy); smaller same-dtype ones in flat buckets through two
  staging buffers per side (one packed or unpacked while the other is on the wire).
  Every call ends within the group's timeout with a clear error.
- `object_store` and `cuda_ipc` (cogrpo/cluster/ray/flat.py): numpy arrays in one Ray object (zero-copy reads on
  the same node; the transport that survives a rollout worker restarting, as a static group cannot take a new
  member), or the learner's GPU buffers shared with rollout workers on the same GPU.

Both sides know the same architecture, so only values travel; a header (version, value count, layout checksum)
catches a mismatch before any value is used.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import time
from typing import Callable

import numpy as np
import psutil
import torch
import torch.distributed as dist

from cogrpo.cluster.compat import copy_all, process_group
from cogrpo.cluster.ray.flat import (BUCKET_BYTES, WeightSyncError, buckets, check_colocated, header, mismatch,
                                     split)
from cogrpo.cluster.ray.pool import RESTARTED, ActorPool, from_learners, get, outcomes
from cogrpo.proto.errors import first_line

MODEL, POLICY = "model.", "policy."


def named_state(model: torch.nn.Module, policy: torch.nn.Module,
                model_state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The message body: both policies' tensors under one namespace. model_state overrides the module's own
    (the gathered full tensors under ZeRO-3)."""
    state = model.state_dict() if model_state is None else model_state
    out = {MODEL + k: v.detach() for k, v in state.items()}
    out.update({POLICY + k: v.detach() for k, v in policy.state_dict().items()})
    return out


def to_numpy(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """numpy has no bfloat16: those travel as float32 (exact), and load back into bf16 tensors exactly."""
    return {k: (v.float() if v.dtype == torch.bfloat16 else v).cpu().numpy() for k, v in state.items()}


def host_store(host: str, timeout_s: float) -> dist.TCPStore:
    """Rank 0's rendezvous store on a free port (`.port`) of `host` alone, opened before the others are told where
    it is. TCPStore by itself listens on every interface; given a socket already bound to `host` it serves on that
    one, which keeps the embedded cluster's stores on loopback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.bind((host, 0))
        listener.listen(128)
        port = listener.getsockname()[1]
        store = dist.TCPStore(host, port, None, True, timeout=datetime.timedelta(seconds=timeout_s),
                              wait_for_workers=False, master_listen_fd=listener.detach())
    return store


def pin_gloo_to(host: str) -> None:
    """gloo's groups made by init_process_group listen on the address the host name resolves to, which can be any
    interface: pin them to the interface that holds `host` (this node's Ray address: loopback on the embedded
    cluster), unless GLOO_SOCKET_IFNAME already names one."""
    if "GLOO_SOCKET_IFNAME" in os.environ:
        return
    address = ipaddress.ip_address(host)
    for interface, entries in psutil.net_if_addrs().items():
        if any(_holds(entry, address) for entry in entries):
            os.environ["GLOO_SOCKET_IFNAME"] = interface
            return


def _holds(entry, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """An interface address entry holds `address`: in its IPv4 network (127.0.0.2 is on loopback), or equal to it."""
    if entry.family == socket.AF_INET and address.version == 4 and entry.netmask:
        return address in ipaddress.ip_network(f"{entry.address}/{entry.netmask}", strict=False)
    return entry.address.split("%")[0] == str(address)


def connect_store(host: str, port: int, timeout_s: float) -> dist.TCPStore:
    return dist.TCPStore(host, port, None, False, timeout=datetime.timedelta(seconds=timeout_s))


class BroadcastGroup:
    """A stateless process group for weight broadcast (it leaves torch.distributed's default group, which the
    learners' DeepSpeed uses, alone). Rank 0 hosts the rendezvous store; construction is collective."""

    def __init__(self, store: dist.Store, rank: int, world: int, own_ip: str, timeout_s: float,
                 bucket_bytes: int = BUCKET_BYTES):
        self.rank, self.world, self.timeout_s, self.bucket_bytes = rank, world, timeout_s, bucket_bytes
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.staging = [torch.empty(0, dtype=torch.uint8, device=self.device) for _ in range(2)]
        try:
            self.group = process_group(store, rank, world, own_ip, timeout_s, cuda=self.device == "cuda")
        except RuntimeError as exc:
            raise WeightSyncError(self._explain("forming the weight-sync group", exc)) from None

    def _explain(self, what: str, exc: Exception) -> str:
        return (f"weight sync failed while {what} (rank {self.rank} of {self.world}, timeout "
                f"{self.timeout_s:g} s; a peer died or never joined): {first_line(exc)}")

    def _start(self, tensor: torch.Tensor, what: str):
        """The broadcast of `tensor` from rank 0, under way: its work handle, for `_wait`."""
        try:
            return self.group.broadcast(tensor, 0)
        except RuntimeError as exc:
            raise WeightSyncError(self._explain(what, exc)) from None

    def _wait(self, work, what: str) -> None:
        try:
            work.wait()
        except RuntimeError as exc:
            raise WeightSyncError(self._explain(what, exc)) from None

    def _broadcast(self, tensor: torch.Tensor, what: str) -> None:
        self._wait(self._start(tensor, what), what)

    def _all_agree(self, ok: bool) -> bool:
        """Every rank's verdict on the header, so a mismatch ends all sides at once instead of in a timeout."""
        flag = torch.tensor([int(ok)], dtype=torch.int64, device=self.device)
        try:
            self.group.allreduce(flag, dist.ReduceOp.MIN).wait()
        except RuntimeError as exc:
            raise WeightSyncError(self._explain("agreeing on the header", exc)) from None
        return bool(flag.item())

    def _flat(self, slot: int, parts: list[torch.Tensor]) -> torch.Tensor:
        """A flat view for `parts`' values in staging buffer `slot` (0 or 1), grown once to the largest bucket and
        reused: no fresh (page-faulting) allocation per bucket or per publish."""
        size = sum(p.numel() for p in parts) * parts[0].element_size()
        if self.staging[slot].numel() < size:
            self.staging[slot] = torch.empty(size, dtype=torch.uint8, device=self.device)
        return self.staging[slot][:size].view(parts[0].dtype)

    def send(self, version: int, state: dict[str, torch.Tensor]) -> None:
        """Rank 0: the header, then every bucket, up to two packed ones in flight (their staging buffers take
        turns: one is packed while the other is on the wire)."""
        head = header(version, state)
        self._broadcast(torch.tensor(head, dtype=torch.int64, device=self.device), "sending the header")
        if not self._all_agree(True):
            raise WeightSyncError(f"weight sync: a rollout worker's tensors do not match the learner's "
                                  f"({head[1]} values): different architectures on the two sides?")
        what, sent, last, slot = f"sending version {version}", [], [None, None], 0
        for names in buckets(state, self.bucket_bytes):
            parts = [state[n].to(self.device) for n in names]
            if len(parts) == 1:
                flat = parts[0].reshape(-1)
            else:
                if last[slot] is not None:
                    self._wait(last[slot], what)  # the bucket before last is out: its buffer may be packed again
                flat = self._flat(slot, parts)
                torch.cat([p.reshape(-1) for p in parts], out=flat)
            sent.append((self._start(flat, what), flat))
            if len(parts) > 1:
                last[slot], slot = sent[-1][0], 1 - slot
        for work, _ in sent:
            self._wait(work, what)

    def receive(self, into: dict[str, torch.Tensor]) -> int:
        """Ranks 1..W: fill `into` (tensors shaped like the sender's) in place; returns the version received. A
        bucket of one tensor lands in the tensor itself; a packed one is unpacked while the next arrives in the
        other staging buffer."""
        head = torch.zeros(3, dtype=torch.int64, device=self.device)
        self._broadcast(head, "receiving the header")
        version, values, signature = (int(x) for x in head.tolist())
        problem = mismatch(values, signature, into)
        if not self._all_agree(problem is None):
            raise WeightSyncError(problem or f"weight sync: the learner's tensors ({values} values) do not match "
                                  "another rollout worker's: different architectures on the two sides?")
        what, direct, packed, slot = f"receiving version {version}", [], [None, None], 0
        for names in buckets(into, self.bucket_bytes):
            parts = [into[n] for n in names]
            if len(parts) == 1 and parts[0].is_contiguous():
                direct.append(self._start(parts[0].view(-1), what))
                continue
            self._unpack(packed[slot], what)  # the bucket before last, before its buffer is reused
            flat = self._flat(slot, parts)
            packed[slot], slot = (self._start(flat, what), parts, flat), 1 - slot
        for work in direct:
            self._wait(work, what)
        for held in packed:
            self._unpack(held, what)
        return version

    def _unpack(self, held: tuple | None, what: str) -> None:
        """(work, tensors, staging view) of a packed bucket under way: wait for it, then copy it out once."""
        if held is not None:
            work, parts, flat = held
            self._wait(work, what)
            copy_all(parts, split(flat, parts))


class WeightChannel:
    """The driver's side of the channel: publishes the learner's weights to every rollout worker and keeps each
    one current. A broadcast group cannot take a new process, so once a rollout worker has restarted, weights go
    through the object store for the rest of the run."""

    def __init__(self, learners: list, rollouts: ActorPool, transport: str, timeout_s: float,
                 log: Callable[[str], None]):
        """A rollout worker Ray restarted gets the weights through the object store whatever the transport."""
        self.learners, self.rollouts, self.transport, self.timeout_s, self.log = (learners, rollouts, transport,
                                                                                  timeout_s, log)
        self.version = 0  # what every rollout worker should hold
        rollouts.after_recovery = self.bring_up_to_date

    def connect(self) -> None:
        """Form the broadcast group (collective: learner rank 0 hosts its store, all join at once), or check that
        learner rank 0 and every rollout worker share one GPU (cuda_ipc)."""
        if self.transport == "cuda_ipc":
            check_colocated(get([w.gpu_place.remote() for w in [self.learners[0], *self.rollouts]], self.timeout_s))
        if self.transport != "collective":
            return
        host, port = get(self.learners[0].host_weight_sync.remote(), self.timeout_s)
        world = 1 + len(self.rollouts)
        joins = [w.join_weight_sync.remote(host, port, rank + 1, world) for rank, w in enumerate(self.rollouts)]
        get([self.learners[0].join_weight_sync.remote(host, port, 0, world)] + joins, self.timeout_s)

    def publish(self, version: int) -> float:
        """Version `version` to every rollout worker (they swap weights between batches); the seconds it took. A
        broadcast a restarted worker broke is done again through the object store."""
        start, self.version = time.time(), version
        if self.transport == "collective":
            publish = [w.publish.remote("collective") for w in self.learners]
            self._settle([w.receive_weights.remote() for w in self.rollouts], publish)
        if self.transport in ("object_store", "cuda_ipc"):
            message = self._put(self.transport)
            self._settle([w.load_weights.remote(message) for w in self.rollouts])
        return time.time() - start

    def bring_up_to_date(self, slot: int) -> None:
        """A recovered rollout worker gets the current weights, through the object store, unless it holds them."""
        worker = self.rollouts[slot]
        if get(worker.weight_version.remote(), self.timeout_s) != self.version:
            self._leave_broadcast()
            get(worker.load_weights.remote(self._put("object_store")), self.timeout_s)

    def _put(self, transport: str):
        """The learner's message: [ref] to it in the object store, or its CUDA IPC handles (every rank joins: a
        ZeRO-3 gather is collective)."""
        return from_learners([w.publish.remote(transport) for w in self.learners], self.timeout_s)[0]

    def _settle(self, calls: list, publish: list = ()) -> None:
        """Settle one weight-sync call per rollout worker (and the learners' publish). A worker that restarted is
        recovered, and gets the weights then; any other failure is raised, a learner's first."""
        results = outcomes(calls, self.timeout_s)
        restarted = [slot for slot, out in enumerate(results) if isinstance(out, RESTARTED)]
        if restarted:
            self._leave_broadcast()  # the group lost a member: the others missed this broadcast too
            outcomes(list(publish), self.timeout_s)  # the learner's side of the broken broadcast failed as well
            for slot in restarted:
                self.rollouts.recover(slot)
            return
        from_learners(list(publish), self.timeout_s)
        for out in results:
            if isinstance(out, Exception):
                raise out

    def _leave_broadcast(self) -> None:
        if self.transport == "collective":
            self.transport = "object_store"
            self.log("weight sync: a rollout worker restarted and cannot join the broadcast group; weights go "
                     "through the object store from now on")
