"""The plan's schedule (common/schedule.py) on small made-up graphs: dependencies and GPUs respected,
the scaling model's sub-linear steps, the critical path, the allocation search."""
from __future__ import annotations

import pytest

from common.errors import DataError
from common.schedule import LAUNCH_S, Job, choose_gpus, critical_path, fixed_gpus, seconds_on, simulate


def recipe(name: str, hours: float, requires=("folds",), batch: int = 512, micro: int = 128, params: float = 25e6) -> Job:
    """A recipe of `hours` GPU-hours of training on one GPU at 1000 images/s, in steps of `batch`."""
    images = hours * 3600 * 1000.0  # 1000 images/s on one GPU
    return Job(name, tuple(requires), True, train_s=hours * 3600, steps=images / batch, global_batch=batch, micro_batch=micro, params=params)


def graph(*recipes: Job) -> dict[str, Job]:
    jobs = {"folds": Job("folds", (), False, cpu_s=60.0)}
    jobs.update({r.name: r for r in recipes})
    jobs["stack"] = Job("stack", tuple(r.name for r in recipes), False, cpu_s=600.0, shards=True)
    return jobs


def test_one_gpu_is_the_rate_s_time_and_more_gpus_scale_sub_linearly():
    job = recipe("a", 10.0, batch=512, micro=512)
    assert seconds_on(job, 1) == pytest.approx(10 * 3600)  # 512 images at 1000/s: 0.51 s per step, far above the launch floor
    assert 10 * 3600 / 8 < seconds_on(job, 8) < 10 * 3600 / 7  # the all-reduce costs a little
    small = recipe("b", 10.0, batch=64, micro=64)  # 8 images per GPU on 8 GPUs: 8 ms of work under a 20 ms floor
    assert seconds_on(small, 8) == pytest.approx(small.steps * (LAUNCH_S + 2 * 7 / 8 * 4 * 25e6 / 100e9), rel=1e-9)
    assert seconds_on(small, 8) > 2 * seconds_on(small, 1) / 8


def test_dependencies_and_gpus_are_respected():
    jobs = graph(recipe("a", 4), recipe("b", 2), recipe("c", 1, requires=("folds", "a")))
    s = simulate(jobs, {"a": 1, "b": 1, "c": 1}, machines=1, per_machine=1)
    assert s.start["a"] == s.end["folds"] == 60.0  # the longest remaining path (a, then c) first
    assert s.start["b"] == s.end["a"] and s.start["c"] == s.end["b"]  # one GPU: one at a time, b's longer path before c
    assert s.start["stack"] == max(s.end[r] for r in "abc") and s.makespan == s.end["stack"]
    assert [n for n, _ in critical_path(jobs, s)] == ["folds", "a", "b", "c", "stack"]
    assert [how for _, how in critical_path(jobs, s)] == ["", "needs", "gpus", "gpus", "needs"]
    two = simulate(jobs, {"a": 1, "b": 1, "c": 1}, machines=1, per_machine=2)
    assert two.start["b"] == two.start["a"] and two.makespan < s.makespan and two.utilisation() < 1


def test_sharded_cpu_nodes_split_over_the_machines():
    jobs = graph(recipe("a", 1))
    assert simulate(jobs, {"a": 1}, 2, 1).end["stack"] - simulate(jobs, {"a": 1}, 2, 1).start["stack"] == pytest.approx(300.0)


def test_the_search_beats_or_ties_every_uniform_allocation():
    jobs = graph(recipe("long", 40), *(recipe(f"short{i}", 5) for i in range(6)), recipe("tiny_batch", 10, batch=32, micro=32))
    chosen = choose_gpus(jobs, machines=1, per_machine=8)
    best = simulate(jobs, chosen, 1, 8).makespan
    for g in (1, 2, 4, 8):
        assert best <= simulate(jobs, fixed_gpus(jobs, g, 8), 1, 8).makespan + 1e-6
    assert chosen["long"] > 1 and chosen["tiny_batch"] < 8  # the long one widened; the small batch not spread thin


def test_a_g_that_the_run_would_refuse_is_refused():
    jobs = graph(recipe("a", 1, batch=12))
    with pytest.raises(DataError, match="does not split over 8"):
        fixed_gpus(jobs, 8, 8)
    with pytest.raises(DataError, match="a machine has 4"):
        fixed_gpus(jobs, 8, 4)
