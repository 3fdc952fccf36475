"""The weight message's values laid out for moving in bulk, and the two transports that need no process group:

- `ObjectMessage` (`object_store`): the tensors as numpy arrays in one `ray.put`. Ray writes an object's arrays back
  to back into one shared-memory buffer (one copy) and hands a reader on the same node views into it (no copy), so
  the message already is one flat buffer with a small header; packing it flat first would only add a copy.
- `CudaShare` / `IpcMessage` (`cuda_ipc`, rollout and learner on one GPU): learner rank 0 keeps one flat buffer
  per dtype on its GPU and shares it once through CUDA IPC; a publish packs into it, and a rollout worker copies
  out of its mapping of it, device to device.

Both sides hold the same architecture, so only values travel, in `layout` order, and a message carries the value
count and layout checksum that the receiver checks before any value is used.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass

import numpy as np
import ray
import torch
from torch.multiprocessing.reductions import rebuild_cuda_tensor, reduce_tensor

from cogrpo.cluster.compat import copy_all
from cogrpo.proto.errors import InputError

BUCKET_BYTES = 64 * 2**20
ALONE_BYTES = 4 * 2**20


class WeightSyncError(RuntimeError):
    pass


def dtype_groups(state: dict[str, torch.Tensor]) -> list[list[str]]:
    """Names by dtype, in an order both sides compute identically: the flat buffers' layout."""
    by_dtype: dict[torch.dtype, list[str]] = {}
    for name in sorted(state):
        by_dtype.setdefault(state[name].dtype, []).append(name)
    return [by_dtype[dtype] for dtype in sorted(by_dtype, key=str)]


def buckets(state: dict[str, torch.Tensor], bucket_bytes: int = BUCKET_BYTES,
            alone_bytes: int = ALONE_BYTES) -> list[list[str]]:
    """Names grouped into the broadcast's buckets, in an order both sides compute identically: a tensor of
    alone_bytes or more is a bucket by itself (it travels from and into the tensor, uncopied); smaller ones of one
    dtype are packed together up to bucket_bytes."""
    out: list[list[str]] = []
    for names in dtype_groups(state):
        current, size = [], 0
        for name in names:
            nbytes = state[name].numel() * state[name].element_size()
            if nbytes >= alone_bytes:
                out.append([name])
                continue
            if current and size + nbytes > bucket_bytes:
                out.append(current)
                current, size = [], 0
            current.append(name)
            size += nbytes
        if current:
            out.append(current)
    return out


def layout_signature(state: dict[str, torch.Tensor]) -> int:
    """A checksum of names, shapes and dtypes: the two sides must agree on it before any value is trusted."""
    text = ";".join(f"{n}:{tuple(state[n].shape)}:{state[n].dtype}" for n in sorted(state))
    return zlib.crc32(text.encode())


def header(version: int, state: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    """(version, value count, layout checksum): what every transport sends ahead of the values."""
    return version, sum(v.numel() for v in state.values()), layout_signature(state)


def mismatch(values: int, signature: int, into: dict[str, torch.Tensor]) -> str | None:
    """Why a message of `values` values and layout `signature` cannot load into `into` (None: it can)."""
    expected = sum(v.numel() for v in into.values())
    if (values, signature) == (expected, layout_signature(into)):
        return None
    return (f"weight sync: the learner's tensors ({values} values) do not match this worker's ({expected} values): "
            "different architectures on the two sides?")


def split(flat: torch.Tensor, parts: list[torch.Tensor]) -> list[torch.Tensor]:
    """Views of `flat` shaped like `parts`, back to back."""
    return [v.view_as(p) for v, p in zip(flat.split([p.numel() for p in parts]), parts)]


@dataclass(frozen=True)
class ObjectMessage:
    version: int
    values: int
    signature: int
    arrays: tuple[np.ndarray, ...]  # in sorted name order; bf16 as its raw 16 bits (numpy has no bf16)

    @classmethod
    def of(cls, version: int, state: dict[str, torch.Tensor]) -> ObjectMessage:
        """Views of the tensors' memory (host tensors are not copied here; `ray.put` copies them once)."""
        arrays = []
        for name in sorted(state):
            value = state[name].detach().cpu()
            arrays.append((value.view(torch.int16) if value.dtype == torch.bfloat16 else value).numpy())
        return cls(*header(version, state), tuple(arrays))

    def load_into(self, into: dict[str, torch.Tensor]) -> int:
        """Copy the values into `into` (a worker's state_dict views) once; returns the version."""
        problem = mismatch(self.values, self.signature, into)
        if problem:
            raise WeightSyncError(problem)
        names = sorted(into)
        with warnings.catch_warnings():  # object-store arrays are read-only views; they are only read here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            sources = [torch.from_numpy(a).view(into[n].dtype) for n, a in zip(names, self.arrays)]
        copy_all([into[n] for n in names], sources)
        return self.version


def load_object(holder: list, into: dict[str, torch.Tensor]) -> int:
    """Object store: [ref] to an ObjectMessage -> its values loaded into `into`; returns the version."""
    return ray.get(holder[0]).load_into(into)


def gpu_place() -> tuple[str, tuple[str, ...]] | None:
    """(node id, the GPU ids Ray gave this process), or None without CUDA: where a CUDA IPC peer must be."""
    if not torch.cuda.is_available():
        return None
    return ray.get_runtime_context().get_node_id(), tuple(str(i) for i in ray.get_gpu_ids())


def check_colocated(places: list[tuple[str, tuple[str, ...]] | None]) -> None:
    """cuda_ipc needs learner rank 0 (places[0]) and every rollout worker on one GPU of one node."""
    roles = ["learner rank 0", *(f"rollout worker {i}" for i in range(len(places) - 1))]
    for role, place in zip(roles, places):
        if place is None:
            raise InputError(f"cluster.weight_sync: cuda_ipc needs CUDA, and {role} has none (use collective or "
                             "object_store)")
        if place != places[0] or len(place[1]) != 1:
            raise InputError(f"cluster.weight_sync: cuda_ipc needs learner rank 0 and every rollout worker on one "
                             f"GPU of one node; {role} has GPUs {list(place[1])} of node {place[0][:8]}, learner "
                             f"rank 0 GPUs {list(places[0][1])} of node {places[0][0][:8]} (use collective or "
                             "object_store)")


@dataclass(frozen=True)
class IpcMessage:
    version: int
    values: int
    signature: int
    handles: tuple[tuple, ...]  # per flat buffer: torch's CUDA IPC rebuild arguments


class CudaShare:
    """Learner rank 0's side of cuda_ipc: one flat buffer per dtype on its GPU, shared once, packed each publish."""

    def __init__(self):
        self.buffers: list[torch.Tensor] = []
        self.handles: tuple[tuple, ...] = ()

    def publish(self, version: int, state: dict[str, torch.Tensor]) -> IpcMessage:
        groups = dtype_groups(state)
        if [b.numel() for b in self.buffers] != [sum(state[n].numel() for n in names) for names in groups]:
            self.buffers = [torch.empty(sum(state[n].numel() for n in names), dtype=state[names[0]].dtype,
                                        device=state[names[0]].device) for names in groups]
            self.handles = tuple(reduce_tensor(b)[1] for b in self.buffers)
        for flat, names in zip(self.buffers, groups):
            torch.cat([state[n].reshape(-1) for n in names], out=flat)
        torch.cuda.current_stream().synchronize()  # the values are in place before any reader is told
        return IpcMessage(*header(version, state), self.handles)


class CudaMapped:
    """A rollout worker's side of cuda_ipc: the learner's buffers mapped once, copied out device to device."""

    def __init__(self):
        self.mapped: dict[tuple, torch.Tensor] = {}

    def load(self, message: IpcMessage, into: dict[str, torch.Tensor]) -> int:
        problem = mismatch(message.values, message.signature, into)
        if problem:
            raise WeightSyncError(problem)
        if set(self.mapped) != set(message.handles):
            self.mapped = {h: rebuild_cuda_tensor(*h) for h in message.handles}
        parts = [[into[n] for n in names] for names in dtype_groups(into)]
        copy_all([p for group in parts for p in group],
                 [v for h, group in zip(message.handles, parts) for v in split(self.mapped[h], group)])
        torch.cuda.current_stream().synchronize()  # done reading before the learner may write the next version
        return message.version
