"""Faults of the restartable roles, in one place. Ray restarts a dead rollout or reward worker
(cluster.max_restarts); an `ActorPool` waits for the new process, counts it once however many of its calls failed,
brings it up to date (a rollout worker gets the current weights), and has the lost calls issued again with the
same inputs. A hung call is ended by restarting its worker, and retried, before its result is given up.
A learner's state lives only in it and in the checkpoints, so a dead learner is not recovered: it is a FaultError.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import ray

from cogrpo.proto.errors import FaultError, InputError, first_line

ROLLOUT, REWARD = "rollout", "reward"  # the roles Ray restarts


class WeightsMissing(RuntimeError):
    """A rollout worker was asked to sample with weights it does not hold: Ray restarted it, and a new process
    starts from the configured checkpoint, so the driver must send it the current weights first."""


RESTARTED = (ray.exceptions.RayActorError, WeightsMissing)  # a call that failed because its worker restarted


def get(refs, timeout_s: float):
    """ray.get within a timeout; bad input an actor found is raised as itself (one line, as in one process). Of a
    list, the first call to fail is raised when it fails, not once the others end (a learner still starting)."""
    try:
        if isinstance(refs, list):
            deadline, pending = time.monotonic() + timeout_s, list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
                if not done:
                    raise ray.exceptions.GetTimeoutError(f"{len(pending)} calls did not end within {timeout_s:g} s")
                ray.get(done)
        return ray.get(refs, timeout=timeout_s)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, InputError):
            raise exc.cause from None
        raise


def outcomes(refs: list, timeout_s: float) -> list:
    """Each call's result or its Ray error, once all have ended (within the timeout)."""
    if refs:
        ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    out = []
    for ref in refs:
        try:
            out.append(get(ref, timeout_s))
        except ray.exceptions.RayError as exc:
            out.append(exc)
    return out


def from_learners(refs, timeout_s: float):
    """ray.get for learner calls: a dead learner ends the run."""
    try:
        return get(refs, timeout_s)
    except ray.exceptions.RayActorError as exc:
        raise FaultError(f"a learner died ({first_line(exc)})") from None


class ActorPool:
    """The actors of one restartable role, picked round-robin by batch index."""

    def __init__(self, role: str, actors: list, timeout_s: float, max_restarts: int, log: Callable[[str], None]):
        self.role, self.actors, self.timeout_s, self.max_restarts, self.log = role, actors, timeout_s, max_restarts, log
        self.after_recovery: Callable[[int], None] = lambda slot: None  # e.g. send a rollout worker the weights
        self.restarts = 0
        self.timeouts: dict[str, int] = {}
        self.incarnations: list = []

    def __len__(self) -> int:
        return len(self.actors)

    def __getitem__(self, slot: int):
        return self.actors[slot]

    def slot(self, index: int) -> int:
        return index % len(self.actors)

    def started(self) -> None:
        """Record each actor's process, once all are up."""
        self.incarnations = get([a.incarnation.remote() for a in self.actors], self.timeout_s)

    def recover(self, slot: int) -> None:
        """Wait until Ray has restarted a failed actor, then bring it up to date."""
        actor = self.actors[slot]
        deadline = time.time() + self.timeout_s
        while True:
            try:
                now = get(actor.incarnation.remote(), self.timeout_s)
                if now != self.incarnations[slot]:
                    self.incarnations[slot] = now
                    self.restarts += 1
                    self.log(f"{self.role} worker {slot} restarted (process {now[1]})")
                self.after_recovery(slot)
                return
            except ray.exceptions.ActorDiedError as exc:
                raise FaultError(f"{self.role} worker {slot} died for good, its restarts used up "
                                 f"(cluster.max_restarts {self.max_restarts}): {first_line(exc)}") from None
            except ray.exceptions.RayActorError:  # still restarting
                if time.time() > deadline:
                    raise FaultError(f"{self.role} worker {slot} did not come back within cluster.timeout_s "
                                     f"{self.timeout_s:g} s") from None
                time.sleep(0.2)

    def result(self, slot: int, ref, issue_again: Callable[[], Any]):
        """A call's result; if its worker restarted under it, the worker is recovered and the call issued again
        (issue_again returns the new reference)."""
        while True:
            try:
                return get(ref, self.timeout_s)
            except RESTARTED:
                self.recover(slot)
                ref = issue_again()

    def result_or_none(self, slot: int, ref, issue_again: Callable[[], Any], timeout_s: float, retries: int,
                       label: str, what: str):
        """A call that may hang or fail (a reward): one that hangs past `timeout_s` has its worker restarted
        (nothing else frees it); hung or failed calls are retried `retries` times, after which the result is None.
        A worker that died under the call is recovered and the call issued again, not counted as its failure.
        Timeouts are counted by `label`; a failure is logged after `what`."""
        failures = 0
        while True:
            try:
                return get(ref, timeout_s)
            except ray.exceptions.GetTimeoutError:
                self.timeouts[label] = self.timeouts.get(label, 0) + 1
                ray.kill(self.actors[slot], no_restart=False)
                self.recover(slot)
                failures += 1
            except ray.exceptions.RayActorError:
                self.recover(slot)
            except ray.exceptions.RayTaskError as exc:
                self.log(f"{what}: {first_line(exc)}")
                failures += 1
            if failures > retries:
                return None
            ref = issue_again()

    def take_counts(self) -> tuple[int, dict[str, int]]:
        """(restarts, timeouts by label) since the last call: rows hold counts per iteration, not running totals."""
        counts = (self.restarts, self.timeouts)
        self.restarts, self.timeouts = 0, {}
        return counts
