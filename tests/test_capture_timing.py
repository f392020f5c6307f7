"""perf/step_time between optimizer steps and perf/samples_per_sec from the watched model's input."""
import time

import pytest
import torch
import torch.nn.functional as F

import autolog
from capture_util import batches, open_run, read, series, tiny


def test_step_time_and_throughput(tmp_path):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = batches(10, size=6)
    marks = []
    start = time.perf_counter()
    with open_run(tmp_path, log_every=2) as run:
        autolog.watch(model, log=None)
        for step in range(5):
            opt.zero_grad()
            for x, y in data[2 * step:2 * step + 2]:  # two micro-batches of 6: 12 samples per step
                F.mse_loss(model(x), y).backward()
            with torch.no_grad():
                model(data[0][0])  # an evaluation forward: not counted
            opt.step()
            marks.append(time.perf_counter())
    data = read(run)
    step_time = series(data, "perf/step_time")
    throughput = series(data, "perf/samples_per_sec")
    assert sorted(step_time) == [1, 2, 3, 4]  # the first step has nothing to be measured from
    for step, seconds in step_time.items():
        # the clock is read inside step() `step` and `step - 1`, so between these marks (no
        # timing assumption: only the order of the reads)
        assert 0 < seconds <= marks[step] - (marks[step - 2] if step >= 2 else start)
        assert throughput[step] == pytest.approx(12 / seconds)


def test_step_time_without_watch_has_no_throughput(tmp_path):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with open_run(tmp_path) as run:
        for x, y in batches(3):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
    data = read(run)
    assert sorted(series(data, "perf/step_time")) == [1, 2]
    assert "perf/samples_per_sec" not in data.metrics
