"""Weight sync: learner rank 0 -> every rollout worker, one versioned message that holds the model's and the
schedule policy's tensors. Two transports:

- `collective`: a bucketed broadcast over a process group of its own (learner rank 0 is rank 0, rollout workers
  are 1..W; gloo on CPU, NCCL on GPU), separate from the learners' DeepSpeed group. Same-dtype tensors are packed
  into flat buckets so a 100M-parameter model moves in a few large messages. Every call ends within the group's
  timeout with a clear error.
- `object_store`: numpy arrays through the Ray object store (zero-copy reads on the same node); the fallback,
  and the transport that survives a rollout worker restarting (a static group cannot take a new member).

Both sides know the same architecture, so only values travel; a header (version, value count, layout checksum)
catches a mismatch before any value is used.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import zlib

import numpy as np
import psutil
import torch
import torch.distributed as dist

MODEL, POLICY = "model.", "policy."
BUCKET_BYTES = 64 * 2**20


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


def load_named_state(model: torch.nn.Module, policy: torch.nn.Module, weights: dict) -> None:
    """Load a message (torch tensors or numpy arrays) into both modules, strictly."""
    for module, prefix in ((model, MODEL), (policy, POLICY)):
        module.load_state_dict({k[len(prefix):]: torch.as_tensor(v) for k, v in weights.items()
                                if k.startswith(prefix)})


def buckets(state: dict[str, torch.Tensor], bucket_bytes: int = BUCKET_BYTES) -> list[list[str]]:
    """Names grouped into buckets of one dtype and at most bucket_bytes (a larger tensor gets its own bucket), in
    an order both sides compute identically."""
    out: list[list[str]] = []
    by_dtype: dict[torch.dtype, list[str]] = {}
    for name in sorted(state):
        by_dtype.setdefault(state[name].dtype, []).append(name)
    for dtype in sorted(by_dtype, key=str):
        current, size = [], 0
        for name in by_dtype[dtype]:
            nbytes = state[name].numel() * state[name].element_size()
            if current and size + nbytes > bucket_bytes:
                out.append(current)
                current, size = [], 0
            current.append(name)
            size += nbytes
        out.append(current)
    return out


def layout_signature(state: dict[str, torch.Tensor]) -> int:
    """A checksum of names, shapes and dtypes: the two sides must agree on it before any value is trusted."""
    text = ";".join(f"{n}:{tuple(state[n].shape)}:{state[n].dtype}" for n in sorted(state))
    return zlib.crc32(text.encode())


class WeightSyncError(RuntimeError):
    pass


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
        timeout = datetime.timedelta(seconds=timeout_s)
        try:
            if self.device == "cuda":
                options = dist.ProcessGroupNCCL.Options()
                options._timeout = timeout
                self.group = dist.ProcessGroupNCCL(store, rank, world, options)
            else:
                options = dist.ProcessGroupGloo._Options()
                options._timeout = timeout
                options._devices = [dist.ProcessGroupGloo.create_device(hostname=own_ip)]
                self.group = dist.ProcessGroupGloo(store, rank, world, options)
        except RuntimeError as exc:
            raise WeightSyncError(self._explain("forming the weight-sync group", exc)) from None

    def _explain(self, what: str, exc: Exception) -> str:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return (f"weight sync failed while {what} (rank {self.rank} of {self.world}, timeout "
                f"{self.timeout_s:g} s; a peer died or never joined): {first}")

    def _broadcast(self, tensor: torch.Tensor, what: str) -> None:
        try:
            self.group.broadcast(tensor, 0).wait()
        except RuntimeError as exc:
            raise WeightSyncError(self._explain(what, exc)) from None

    def _all_agree(self, ok: bool) -> bool:
        """Every rank's verdict on the header, so a mismatch ends all sides at once instead of in a timeout."""
        flag = torch.tensor([int(ok)], dtype=torch.int64, device=self.device)
        try:
            self.group.allreduce(flag, dist.ReduceOp.MIN).wait()
        except RuntimeError as exc:
            raise WeightSyncError(self._explain("agreeing on the header", exc)) from None
        return bool(flag.item())

    def send(self, version: int, state: dict[str, torch.Tensor]) -> None:
        """Rank 0: the header, then one flat buffer per bucket."""
        header = [version, sum(v.numel() for v in state.values()), layout_signature(state)]
        self._broadcast(torch.tensor(header, dtype=torch.int64, device=self.device), "sending the header")
        if not self._all_agree(True):
            raise WeightSyncError(f"weight sync: a rollout worker's tensors do not match the learner's "
                                  f"({header[1]} values): different architectures on the two sides?")
        for names in buckets(state, self.bucket_bytes):
            flat = torch.cat([state[n].reshape(-1).to(self.device) for n in names])
            self._broadcast(flat, f"sending version {version}")

    def receive(self, into: dict[str, torch.Tensor]) -> int:
        """Ranks 1..W: fill `into` (tensors shaped like the sender's) in place; returns the version received."""
        header = torch.zeros(3, dtype=torch.int64, device=self.device)
        self._broadcast(header, "receiving the header")
        version, total, signature = (int(x) for x in header.tolist())
        expected = sum(v.numel() for v in into.values())
        matches = (total, signature) == (expected, layout_signature(into))
        if not self._all_agree(matches):
            who = "another rollout worker's" if matches else f"this worker's ({expected} values)"
            raise WeightSyncError(f"weight sync: the learner's tensors ({total} values) do not match {who}: "
                                  "different architectures on the two sides?")
        for names in buckets(into, self.bucket_bytes):
            flat = torch.empty(sum(into[n].numel() for n in names), dtype=into[names[0]].dtype, device=self.device)
            self._broadcast(flat, f"receiving version {version}")
            for name, part in zip(names, flat.split([into[n].numel() for n in names])):
                into[name].copy_(part.view_as(into[name]))
        return version
