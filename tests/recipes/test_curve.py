"""AccuracyCurve probes on schedule, excludes its own time, and leaves the model's mode as it was."""

import time

import torch

from genlab.recipes.curve import AccuracyCurve


def test_probes_every_n_steps_and_excludes_probe_time(monkeypatch):
    calls = []

    def fake_suite(model, tokenizer, items, config):
        calls.append(config.mode)
        time.sleep(0.05)  # a probe that takes time
        return {"accuracy": {"qa": 0.5}}

    monkeypatch.setattr("genlab.recipes.curve.run_eval_suite", fake_suite)
    model = torch.nn.Linear(1, 1)  # any module: run_eval_suite is patched, we count its calls
    model.train()
    curve = AccuracyCurve(model, None, {"qa": []}, every=3, phase="pretrain", time_offset=10.0)
    for step in range(1, 8):
        assert curve({"step": step}) is False
    assert [p["step"] for p in curve.points] == [3, 6]
    assert calls == ["chat", "chat"] and model.training
    # Two 50 ms probes happened, but training time barely moved: the probes are not counted.
    assert curve.points[1]["train_seconds"] - curve.points[0]["train_seconds"] < 0.05
    assert curve.points[0]["train_seconds"] >= 10.0 and curve.points[0]["qa"] == 0.5
    assert curve.probe_seconds >= 0.1
    # Extra steps (the phase's end), with or without a period.
    for every, at, expected in ((3, {7}, [3, 6, 7]), (0, {2, 5}, [2, 5])):
        curve = AccuracyCurve(model, None, {"qa": []}, every=every, at=frozenset(at))
        for step in range(1, 8):
            curve({"step": step})
        assert [p["step"] for p in curve.points] == expected
