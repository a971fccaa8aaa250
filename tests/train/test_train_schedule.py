"""Warmup + cosine schedule against closed-form values at its boundaries.

Handbook III; Brown et al. 2020 (GPT-3 App. B), Hoffmann et al. 2022. Budget: < 1 s.

    python -m pytest -q tests/train/test_train_schedule.py
"""

import math

import pytest

from genlab.errors import ConfigError
from genlab.train.schedule import Schedule, lr_at

S = Schedule(lr=1e-3, warmup=10, steps=110, min_lr_ratio=0.1)


@pytest.mark.parametrize("step, expected", [
    (0, 1e-4),  # first update: lr / warmup
    (4, 5e-4),
    (9, 1e-3),  # last warmup step reaches the peak
    (10, 1e-3),  # decay starts at the peak (cos 0 = 1)
    (35, 1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi / 4))),  # a quarter of the decay
    (60, 1e-4 + 0.9e-3 * 0.5),  # half-way: the mean of peak and floor
    (110, 1e-4),  # end: the floor
    (111, 1e-4),  # beyond the end: stays at the floor
    (10_000, 1e-4),
])
def test_closed_form_values(step, expected):
    assert math.isclose(lr_at(step, S), expected, rel_tol=1e-12)


def test_monotone_up_then_down():
    lrs = [lr_at(s, S) for s in range(120)]
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_no_warmup_and_zero_floor():
    s = Schedule(lr=2.0, warmup=0, steps=4, min_lr_ratio=0.0)
    assert [lr_at(i, s) for i in range(5)] == pytest.approx([2.0, 1.0 + math.sqrt(0.5), 1.0, 1.0 - math.sqrt(0.5), 0.0])


def test_warmup_equal_to_steps_has_no_decay_phase():
    s = Schedule(lr=1.0, warmup=4, steps=4, min_lr_ratio=0.5)
    assert [lr_at(i, s) for i in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 0.5, 0.5])


@pytest.mark.parametrize("kw", [dict(lr=0.0), dict(steps=0), dict(warmup=200), dict(warmup=-1), dict(min_lr_ratio=1.5)])
def test_bad_schedules(kw):
    with pytest.raises(ConfigError):
        Schedule(**{**dict(lr=1e-3, warmup=10, steps=100), **kw})


def test_negative_step():
    with pytest.raises(ConfigError):
        lr_at(-1, S)
