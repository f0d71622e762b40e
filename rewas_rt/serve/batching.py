"""Merging concurrent requests into engine batches: plain functions, no Ray.

``@serve.batch`` (rewas_rt.serve.app) hands a list of jobs that arrived within
``batch_wait_ms`` of each other; ``plan_batches`` splits it into compatible groups
(same ``GenerationOptions.batch_key``: steps, guidance, eta, hint mode) of at most
``max_items`` candidates, and ``run_batches`` makes one ``Pipeline.generate`` call
per group. A clip longer than one window (a ``VideoRequest``) is generated alone by
``Pipeline.generate_video``: its windows run in order, each continuing the previous one. Candidates and energy edits may differ inside a group (they are per
request). Every candidate has its own seeded generator, so a request's waveforms
are the same bytes as when it runs alone (tests/test_serve_batching.py, and the
service test against the CLI).
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Hashable, Sequence

from rewas_rt.errors import RewasError
from rewas_rt.options import GenerationOptions
from rewas_rt.pipeline import Pipeline, Request, Result, VideoRequest


@dataclasses.dataclass
class Job:
    """One admitted request, decoded and validated, ready for the engines."""

    request: Request | VideoRequest  # VideoRequest: a clip of several windows, generated alone
    options: GenerationOptions
    size: int = 1  # room in a batch: job_size(candidates, max_items); @serve.batch counts it
    submitted: float = 0.0  # time.perf_counter() when it was queued (queue-wait metric)

    @property
    def candidates(self) -> int:
        return getattr(self.request, "candidates", None) or self.options.candidates

    @property
    def batch_key(self) -> Hashable:
        """Jobs with equal keys can share a generate call; a whole-video job shares with none."""
        return ("video", id(self)) if isinstance(self.request, VideoRequest) else self.options.batch_key


@dataclasses.dataclass
class Outcome:
    result: Result | None
    error: RewasError | None
    batch_requests: int  # requests in the Pipeline.generate call that served this job
    batch_items: int  # candidates in that call
    seconds: float  # that call's wall time
    call: float = 0  # which generate call of the batch (outcomes sharing a call were merged)


def job_size(candidates: int, max_items: int) -> int:
    """The room a request takes in a batch: its candidates, at most a whole batch."""
    return max(1, min(candidates, max_items))


def plan_batches(keys: Sequence[Hashable], sizes: Sequence[int], max_items: int) -> list[list[int]]:
    """Indices of jobs grouped for one generate call each.

    Jobs with equal keys share a call; within a key, jobs are packed in arrival
    order while the candidates fit in ``max_items`` (first fit, so a large job
    does not hold back smaller ones behind it). A job larger than ``max_items``
    runs alone (the pipeline splits it into engine batches). Groups come out in
    the order of their first job.
    """
    if max_items < 1:
        raise ValueError(f"max_items must be >= 1, got {max_items}")
    if len(keys) != len(sizes):
        raise ValueError("keys and sizes differ in length")
    groups: list[tuple[Hashable, list[int], int]] = []  # (key, members, items)
    for i, (key, size) in enumerate(zip(keys, sizes)):
        for g, (k, members, items) in enumerate(groups):
            if k == key and items + size <= max_items:
                members.append(i)
                groups[g] = (k, members, items + size)
                break
        else:
            groups.append((key, [i], size))
    return [members for _, members, _ in groups]


def run_batches(pipe: Pipeline, jobs: Sequence[Job], max_items: int) -> list[Outcome]:
    """Generate every job, one Pipeline.generate call per planned group.

    A user error (RewasError) in a merged group is attributed by rerunning the
    group's jobs one by one, so one bad request never fails its neighbours.
    """
    sizes = [job_size(j.candidates, max_items) for j in jobs]
    outcomes: list[Outcome | None] = [None] * len(jobs)
    for call, group in enumerate(plan_batches([j.batch_key for j in jobs], sizes, max_items)):
        members = [jobs[i] for i in group]
        items = sum(j.candidates for j in members)
        t0 = time.perf_counter()
        try:
            if isinstance(members[0].request, VideoRequest):
                results = [pipe.generate_video(members[0].request, members[0].options)]
            else:
                results = pipe.generate([j.request for j in members], _group_options(members))
        except RewasError as e:
            if len(group) == 1:
                outcomes[group[0]] = Outcome(None, e, 1, items, time.perf_counter() - t0, call)
                continue
            for k, i in enumerate(group):
                alone = run_batches(pipe, [jobs[i]], max_items)[0]
                outcomes[i] = dataclasses.replace(alone, call=call + (k + 1) / (len(group) + 1))
            continue
        seconds = time.perf_counter() - t0
        for i, res in zip(group, results):
            outcomes[i] = Outcome(res, None, len(group), items, seconds, call)
    return outcomes  # type: ignore[return-value]


def _group_options(members: Sequence[Job]) -> GenerationOptions:
    """The shared options of a group; candidates and edits travel in each Request."""
    first = members[0].options
    for j in members:
        if j.request.candidates is None or j.request.energy_edit is None:
            j.request.candidates = j.options.candidates
            j.request.energy_edit = j.options.energy_edit
    return first
