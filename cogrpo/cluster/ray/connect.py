"""Reaching a Ray cluster: attach to one (cluster.address, or the Ray job's), or start an embedded one that listens
on 127.0.0.1 only; and check that it can hold the requested actors before any starts."""

from __future__ import annotations

import math
import os
import socket
import tempfile
import time
from contextlib import contextmanager

import ray

from cogrpo.cluster.compat import ray_single_machine_flag
from cogrpo.proto.config import Config
from cogrpo.proto.errors import FaultError, InputError, clip

LOOPBACK = "127.0.0.1"
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's single-machine mode, on any platform
GCS_WAIT_ENV = "RAY_gcs_server_port_wait_time_s"  # seconds ray.init(address) tries the cluster's GCS
# A gRPC server answers a client's HTTP/2 connection preface with a SETTINGS frame (RFC 9113, 3.4).
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HTTP2_EMPTY_SETTINGS = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # length 0, type SETTINGS, no flags, stream 0
HTTP2_SETTINGS = 4


@contextmanager
def single_machine_mode(enabled: bool):
    """Ray on Linux replaces a node address of 127.0.0.1 with the machine's network address, and its GCS, raylet and
    workers then listen on every interface. In its single-machine mode (Ray's default on macOS and Windows) the node
    keeps 127.0.0.1 and every server listens there only. Ray reads the mode from the environment when it is imported,
    so both the imported flag (for this driver) and the variable (for the processes ray.init() starts) are set, and
    restored afterwards: a multi-node cluster started later from this process must not inherit them."""
    if not enabled:
        yield
        return
    with environment(SINGLE_MACHINE_ENV, "0"), ray_single_machine_flag(True):
        yield


@contextmanager
def environment(name: str, value: str):
    """The environment variable `name` set to `value` inside, restored (or removed again) afterwards."""
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def connect(config: Config) -> None:
    """Attach to cluster.address, or to the cluster of the Ray job this driver runs in (RAY_ADDRESS), or start an
    embedded one. The working directory is restored afterwards: inside a `ray job submit --working-dir` job,
    ray.init() can delete and re-create it."""
    if ray.is_initialized():
        return
    c = config.cluster
    cwd = os.getcwd()
    address = c.address or os.environ.get("RAY_ADDRESS")
    if address is None:
        with single_machine_mode(c.node_ip == LOOPBACK):
            ray.init(num_cpus=c.num_cpus, include_dashboard=False, _node_ip_address=c.node_ip,
                     object_store_memory=c.object_store_mb * 2**20, log_to_driver=False, logging_level="WARNING")
    else:
        attach(address, c.timeout_s)
    return_to(cwd, c.timeout_s)


def attach(address: str, timeout_s: float) -> None:
    """ray.init(address) bounded by cluster.timeout_s: Ray's wait for the cluster's GCS is capped there (its
    environment knob, read by ray.init), and a failure is one line, not Ray's retry warnings (written to the file
    descriptor: held in a file while connecting, replayed on success)."""
    check_reachable(address, timeout_s)
    stderr = os.dup(2)
    with tempfile.TemporaryFile() as held, environment(GCS_WAIT_ENV, str(max(1, math.ceil(timeout_s)))):
        os.dup2(held.fileno(), 2)
        try:
            ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        except ConnectionError:
            raise InputError(f"cluster.address {clip(address)!r}: something answers there but no Ray cluster "
                             f"connected within cluster.timeout_s {timeout_s:g} s") from None
        finally:
            os.dup2(stderr, 2)
            os.close(stderr)
        held.seek(0)
        os.write(2, held.read())


def check_reachable(address: str, timeout_s: float) -> None:
    """One line within cluster.timeout_s when no gRPC server (a Ray GCS or Ray client server) answers at HOST:PORT
    or ray://HOST:PORT: nothing listening, a host that drops the connection, or a server that never speaks HTTP/2.
    ray.init() would retry for minutes there, with a screen of warnings. "auto" (the local cluster Ray finds) is
    left to Ray."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"cluster.address {clip(address)!r} is not HOST:PORT, ray://HOST:PORT or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as conn:
            conn.sendall(HTTP2_PREFACE + HTTP2_EMPTY_SETTINGS)
            frame = conn.recv(9)
    except OSError as exc:
        raise InputError(f"cluster.address {clip(address)!r}: no Ray cluster answers there within cluster.timeout_s "
                         f"{timeout_s:g} s ({clip(str(exc))})") from None
    if len(frame) < 4 or frame[3] != HTTP2_SETTINGS:
        raise InputError(f"cluster.address {clip(address)!r}: something answers there, but not a Ray cluster (no "
                         "gRPC server)")


def return_to(directory: str, timeout_s: float) -> None:
    """chdir to `directory` once it exists: ray.init() can return while the job's working directory it deleted is
    still being unpacked again (seen as a FileNotFoundError in a `ray job submit` run of the test suite)."""
    deadline = time.time() + timeout_s
    while not os.path.isdir(directory):
        if time.time() > deadline:
            raise FaultError(f"the working directory {directory} did not come back within cluster.timeout_s "
                             f"{timeout_s:g} s after connecting to Ray")
        time.sleep(0.05)
    os.chdir(directory)


def check_resources(config: Config) -> None:
    """Fail at once with a clear message when the cluster cannot hold the requested actors (never hang pending)."""
    c = config.cluster
    need: dict[str, float] = {}
    for count, cpus, gpus, resources in ((c.rollout_workers, c.rollout_cpus, c.rollout_gpus, c.rollout_resources),
                                         (c.reward_workers, c.reward_cpus, c.reward_gpus, c.reward_resources),
                                         (c.learner_ranks, c.learner_cpus, c.learner_gpus, c.learner_resources)):
        for name, amount in {"CPU": cpus, "GPU": gpus, **resources}.items():
            need[name] = need.get(name, 0) + amount * count
    have = ray.cluster_resources()
    for name, amount in need.items():
        if amount > have.get(name, 0) + 1e-9:
            raise InputError(f"cluster cannot satisfy the request: {amount:g} {name} needed, "
                             f"{have.get(name, 0):g} in the cluster (cluster.* in the config)")
