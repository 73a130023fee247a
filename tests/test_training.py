"""fit(): it learns, reports, stops early, rejects bad input, and resumes bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import nfapps.atomic as atomic
from nfapps.atomic import FlowFileError, load_container
from nfapps.builders import RealNVP
from nfapps.device import resolve_device
from nfapps.flow import Flow
from nfapps.training import PLATEAU_EPOCHS, History, fit, scheduled_lr

TESTS = Path(__file__).parent


def build(features: int = 2, context: int = 0) -> Flow:
    torch.manual_seed(0)
    return RealNVP(features, context, transforms=2, hidden=(16, 16))


def make_data(n: int = 256, features: int = 2, context: int = 0, seed: int = 0):
    g = np.random.default_rng(seed)
    x = 3.0 + 0.5 * g.standard_normal((n, features))
    if not context:
        return x.astype(np.float32), None
    c = g.standard_normal((n, context)).astype(np.float32)
    return (x + c[:, :1]).astype(np.float32), c


def same_weights(a: Flow, b: Flow) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


QUICK = dict(batch_size=64, lr=5e-2, progress=False, device="cpu")


def test_training_lowers_nll_and_reports_history():
    x, c = make_data(context=1)
    flow = build(context=1)
    before = -flow.log_prob(torch.as_tensor(x), torch.as_tensor(c)).mean().item()
    history = fit(flow, x, c, epochs=15, **QUICK)
    after = -flow.log_prob(torch.as_tensor(x), torch.as_tensor(c)).mean().item()
    assert after < before - 3
    assert isinstance(history, History)
    assert history.epochs_run == len(history.train_nll) == len(history.val_nll) == 15
    assert history.train_nll[-1] < history.train_nll[0]
    assert history.best_epoch == int(np.argmin(history.val_nll))
    assert history.wall_time > 0 and not history.stopped_early
    assert json.loads(json.dumps(history.to_dict()))["epochs_run"] == 15
    assert not flow.training  # returned ready to use


def test_accepts_tensors_and_explicit_validation_without_touching_global_rng():
    x, _ = make_data()
    flow = build()
    rng = torch.get_rng_state()
    history = fit(flow, torch.as_tensor(x[:200]), validation=torch.as_tensor(x[200:]), epochs=3, **QUICK)
    assert torch.equal(rng, torch.get_rng_state())
    assert len(history.val_nll) == 3


def test_without_validation_keeps_last_epoch():
    x, _ = make_data()
    history = fit(build(), x, epochs=3, val_fraction=0, **QUICK)
    assert history.val_nll == [] and history.best_epoch == 2


def test_early_stopping_restores_best_weights():
    # Training data around +3, validation data around −3: the validation NLL only rises.
    x, _ = make_data()
    val = np.random.default_rng(1).standard_normal((64, 2)).astype(np.float32) - 3
    flow = build()
    history = fit(flow, x, validation=val, epochs=50, patience=3, **QUICK)
    assert history.stopped_early and history.epochs_run == 4 and history.best_epoch == 0
    one_epoch = build()
    fit(one_epoch, x, validation=val, epochs=1, **QUICK)
    assert same_weights(flow, one_epoch)


@pytest.mark.parametrize(
    "data, context, match",
    [
        ("nan", "ok", r"data contains NaN or inf \(first at row 5"),
        ("3 features", "ok", "data has 3 features, but the flow expects shape \\(batch, 2\\)"),
        ("empty", "ok", "data is empty"),
        ("ok", None, "conditional: pass a context of shape \\(batch, 1\\)"),
        ("ok", "2 wide", "context has shape \\(256, 2\\), but the flow expects \\(batch, 1\\)"),
        ("ok", "short", "context has 255 rows but the input has 256"),
        ("ok", "inf", "context contains NaN or inf \\(first at row 7"),
    ],
)
def test_bad_data_gives_clear_errors(data, context, match):
    x, c = make_data(context=1)
    x = {"nan": np.where(np.arange(256)[:, None] == 5, np.nan, x), "3 features": np.ones((256, 3)),
         "empty": np.ones((0, 2)), "ok": x}[data]
    if context == "inf":
        c = c.copy()
        c[7, 0] = np.inf
    c = {None: None, "2 wide": np.ones((256, 2)), "short": c[:-1], "ok": c, "inf": c}[context]
    with pytest.raises(ValueError, match=match):
        fit(build(context=1), x, c, epochs=1, **QUICK)


def test_bad_arguments_and_unconditional_context():
    x, _ = make_data()
    with pytest.raises(ValueError, match="unconditional but a context was given"):
        fit(build(), x, np.ones((256, 1)), epochs=1, **QUICK)
    with pytest.raises(ValueError, match="validation data contains NaN"):
        fit(build(), x, validation=np.full((4, 2), np.nan), epochs=1, **QUICK)
    with pytest.raises(ValueError, match="batch_size must be an integer ≥ 1"):
        fit(build(), x, epochs=1, **{**QUICK, "batch_size": 0})
    with pytest.raises(ValueError, match="too few to hold out"):
        fit(build(), x[:1], epochs=1, **QUICK)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu please")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:1")


class Interrupt(Exception):
    pass


def interrupt_after(epoch: int):
    def callback(history: History) -> None:
        if history.epochs_run == epoch:
            raise Interrupt

    return callback


@pytest.mark.parametrize("schedule", ["constant", "cosine", "plateau"])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, schedule):
    x, c = make_data(context=1)
    kwargs = dict(epochs=6, patience=None, lr_schedule=schedule, **QUICK)
    reference = build(context=1)
    expected = fit(reference, x, c, **kwargs)

    flow, path = build(context=1), tmp_path / "run" / "ck.nfapps"
    with pytest.raises(Interrupt):
        fit(flow, x, c, checkpoint=path, callback=interrupt_after(2), **kwargs)
    assert load_container(path, "checkpoint")["history"]["epochs_run"] == 2
    resumed_flow = build(context=1)
    with torch.no_grad():  # a different starting point: the checkpoint must win
        for p in resumed_flow.parameters():
            p.add_(1.0)
    resumed = fit(resumed_flow, x, c, checkpoint=path, **kwargs)
    assert same_weights(reference, resumed_flow)
    assert resumed.train_nll == expected.train_nll and resumed.val_nll == expected.val_nll
    assert resumed.best_epoch == expected.best_epoch and resumed.epochs_run == 6
    again = build(context=1)  # a finished checkpoint returns at once with the same result
    assert fit(again, x, c, checkpoint=path, **kwargs).epochs_run == 6
    assert same_weights(reference, again)


def test_checkpoint_is_never_half_written(tmp_path, monkeypatch):
    x, _ = make_data()
    path = tmp_path / "ck.nfapps"
    with pytest.raises(Interrupt):
        fit(build(), x, checkpoint=path, epochs=5, callback=interrupt_after(2), **QUICK)
    good = path.read_bytes()

    def crash(src, dst):  # the process "dies" between writing the temporary file and renaming it
        raise Interrupt

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(Interrupt):
        fit(build(), x, checkpoint=path, epochs=5, **QUICK)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["ck.nfapps"]  # no temporary file left behind


def test_checkpoint_of_another_flow_is_refused(tmp_path):
    x, _ = make_data(features=2)
    path = tmp_path / "ck.nfapps"
    fit(build(features=2), x, checkpoint=path, epochs=1, **QUICK)
    with pytest.raises(ValueError, match="different flow"):
        fit(build(features=2, context=1), x, np.ones((256, 1)), checkpoint=path, epochs=2, **QUICK)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(FlowFileError, match="truncated"):
        fit(build(), x, checkpoint=path, epochs=2, **QUICK)
    fit(build(), x, checkpoint=path, resume=False, epochs=1, **QUICK)  # resume=False starts afresh
    assert load_container(path, "checkpoint")["history"]["epochs_run"] == 1


def test_checkpoint_from_before_schedules_resumes_as_constant_rate(tmp_path, caplog):
    x, _ = make_data()
    path = tmp_path / "ck.nfapps"
    with pytest.raises(Interrupt):
        fit(build(), x, checkpoint=path, epochs=3, callback=interrupt_after(1), **QUICK)
    old = load_container(path, "checkpoint")
    del old["settings"]["lr_schedule"]  # as written before fit() had lr_schedule
    atomic.dump(old, path, "checkpoint")
    with caplog.at_level("WARNING", logger="nfapps.training"):
        fit(build(), x, checkpoint=path, epochs=2, **QUICK)
    assert "different settings" not in caplog.text
    with caplog.at_level("WARNING", logger="nfapps.training"):
        fit(build(), x, checkpoint=path, epochs=3, lr_schedule="cosine", **QUICK)
    assert "'lr_schedule': ('constant', 'cosine')" in caplog.text


KILLED_RUN = """
import sys, torch
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_training import QUICK, build, make_data  # the same flow and data as the test
from nfapps.training import fit

def callback(history):
    if history.epochs_run == 2:
        Path({marker!r}).touch()

x, c = make_data(context=1)
fit(build(context=1), x, c, checkpoint={checkpoint!r}, callback=callback, **{kwargs!r}, **QUICK)
"""


@pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL (POSIX)")
def test_killed_process_resumes_bit_identically(tmp_path):
    x, c = make_data(context=1)
    kwargs = dict(epochs=60, patience=None)
    checkpoint, marker = tmp_path / "ck.nfapps", tmp_path / "epoch2"
    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN.format(tests=str(TESTS), marker=str(marker), checkpoint=str(checkpoint), kwargs=kwargs))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert marker.exists(), f"the child never finished epoch 2: {child.poll()=}"
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        stderr = child.communicate()[1]
    assert child.returncode == -signal.SIGKILL, stderr
    done = load_container(checkpoint, "checkpoint")["history"]["epochs_run"]
    assert 2 <= done < kwargs["epochs"]

    reference, resumed = build(context=1), build(context=1)
    expected = fit(reference, x, c, **kwargs, **QUICK)
    history = fit(resumed, x, c, checkpoint=checkpoint, **kwargs, **QUICK)
    assert same_weights(reference, resumed)
    assert history.train_nll == expected.train_nll


def test_reproducible_arithmetic_runs_on_one_thread_and_restores_the_settings():
    from nfapps.device import reproducible_arithmetic

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)

        @reproducible_arithmetic()
        def inner():
            with reproducible_arithmetic():  # nested: each level restores what it found
                assert torch.get_num_threads() == 1 and torch.backends.cudnn.deterministic
            assert torch.get_num_threads() == 1
            raise KeyError("inside")

        with pytest.raises(KeyError):
            inner()
        assert torch.get_num_threads() == 2 and not torch.backends.cudnn.deterministic
    finally:
        torch.set_num_threads(threads)


def test_cosine_schedule_anneals_the_learning_rate():
    lrs = [scheduled_lr(1e-2, "cosine", e, 10) for e in range(10)]
    assert lrs[0] == 1e-2 and lrs[5] == pytest.approx(5e-3) and all(a > b > 0 for a, b in zip(lrs, lrs[1:]))
    assert lrs[9] == pytest.approx(1e-2 * (1 + np.cos(0.9 * np.pi)) / 2)
    assert scheduled_lr(1e-2, "constant", 9, 10) == 1e-2
    x, _ = make_data()
    runs = {}
    for schedule, epochs in (("constant", 1), ("cosine", 1), ("constant", 3), ("cosine", 3)):
        flow = build()
        runs[schedule, epochs] = fit(flow, x, epochs=epochs, patience=None, lr_schedule=schedule, **QUICK), flow
    # epoch 0 runs at the full rate under both; later epochs of the cosine run are slower
    assert same_weights(runs["constant", 1][1], runs["cosine", 1][1])
    assert runs["constant", 3][0].train_nll[:1] == runs["cosine", 3][0].train_nll[:1]
    assert runs["constant", 3][0].train_nll[1:] != runs["cosine", 3][0].train_nll[1:]
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        fit(build(), x, epochs=1, lr_schedule="step", **QUICK)


def test_plateau_schedule_halves_after_stalled_epochs():
    assert PLATEAU_EPOCHS == 3
    history = [3.0, 2.0, 2.5, 2.5, 2.5, 1.0, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5]
    # halved after the 3rd stalled epoch following 2.0; then 1.0 resets the count (the rate stays
    # halved) and six more stalled epochs halve it twice
    expected = [1, 1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125]
    assert [scheduled_lr(1.0, "plateau", e, 20, history[:e]) for e in range(13)] == expected
    x, _ = make_data()
    with pytest.raises(ValueError, match="plateau.*val_fraction > 0"):
        fit(build(), x, epochs=1, lr_schedule="plateau", val_fraction=0, **QUICK)
    flow = build()  # a run that stalls keeps going at smaller steps until `patience` stalled epochs
    history = fit(flow, x, epochs=200, patience=8, lr_schedule="plateau", **QUICK)
    assert history.stopped_early and len(history.val_nll) == history.epochs_run
    # it ran at the full rate until its validation history first asked for a halving, then slower:
    # the same epochs at a constant rate agree up to that epoch and part after it
    rates = [scheduled_lr(QUICK["lr"], "plateau", e, 200, history.val_nll[:e]) for e in range(history.epochs_run)]
    first_halved = rates.index(QUICK["lr"] / 2)
    constant = fit(build(), x, epochs=history.epochs_run, patience=None, **QUICK)
    assert constant.train_nll[:first_halved] == history.train_nll[:first_halved]
    assert constant.train_nll[first_halved] != history.train_nll[first_halved]


def test_divergence_error_names_the_rate_the_epoch_ran_at(monkeypatch):
    import nfapps.training as training

    def diverge_at_third(model, flow, optimizer, params, train, val, epoch, *rest):
        return (float("nan") if epoch == 2 else 1.0), 1.0

    monkeypatch.setattr(training, "_epoch", diverge_at_third)
    x, _ = make_data()
    with pytest.raises(FloatingPointError, match=r"NLL became nan in epoch 3.*lower lr \(lr=0.05; this epoch ran at 0.025\)"):
        fit(build(), x, epochs=4, lr_schedule="cosine", **QUICK)
    with pytest.raises(FloatingPointError, match=r"lower lr \(lr=0.05\)"):
        fit(build(), x, epochs=4, **QUICK)
