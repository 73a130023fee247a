"""Data-parallel fit under torchrun (2 CPU processes, gloo) matches a single-process run."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.distributed
from conftest import import_script, torchrun

import nfapps.distributed as dist


# One source for both runs: the test imports it, torchrun runs it as a script.
SCRIPT = '''
import sys

import numpy as np
import torch

import nfapps.distributed as dist
from nfapps.builders import RealNVP
from nfapps.glow import Glow
from nfapps.training import fit

torch.set_num_threads(1)


def vector():
    """Conditional RealNVP. 228 rows hold out 23; the 205 training rows make batches of 51,
    split 26/25 between the two ranks, and a last batch of 1 row that only rank 0 gets."""
    g = np.random.default_rng(0)
    c = g.standard_normal((228, 1)).astype(np.float32)
    x = (g.standard_normal((228, 2)) + c).astype(np.float32)
    torch.manual_seed(0)
    return RealNVP(2, context=1, transforms=2, hidden=(16,)), x, c, dict(batch_size=51, epochs=3, lr=1e-2)


def image():
    """Tiny Glow, whose ActNorm layers initialise from the first batch they see: every rank must
    initialise from the whole first global batch, as the single process does (a rank's shard
    gives values ~0.1 away). The learning rate is tiny because right after that initialisation
    some gradients are pure rounding noise (~1e-7: the batch is centred exactly), which Adam
    turns into steps of size ~lr in either run, so the runs can agree only to ~lr there."""
    g = np.random.default_rng(1)
    x = (0.3 + 0.4 * g.uniform(size=(48, 1, 4, 4)) * np.linspace(0.2, 1, 16).reshape(1, 1, 4, 4)).astype(np.float32)
    torch.manual_seed(0)
    return Glow((1, 4, 4), levels=1, steps=1, hidden=8), x, None, dict(batch_size=16, epochs=2, lr=1e-6)


def train(case, **extra):
    flow, x, c, kwargs = case()
    history = fit(flow, x, c, device="cpu", progress=False, **kwargs, **extra)
    return flow, history


if __name__ == "__main__":
    out = sys.argv[1]
    for case in (vector, image):
        flow, history = train(case, checkpoint=f"{out}/{case.__name__}.ckpt")
        if dist.is_main():
            result = {"state": flow.state_dict(), "history": history.to_dict(), "world": dist.world_size()}
            torch.save(result, f"{out}/{case.__name__}.pt")
'''


@pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="this torch build has no torch.distributed with the gloo backend",
)
def test_torchrun_two_processes_match_single_process(tmp_path):
    script = tmp_path / "ddp_script.py"
    script.write_text(SCRIPT)
    torchrun(str(script), str(tmp_path))

    module = import_script(script, "ddp_script")
    sys.modules.pop("ddp_script", None)
    for case in (module.vector, module.image):
        result = torch.load(tmp_path / f"{case.__name__}.pt", weights_only=True)
        assert result["world"] == 2
        assert (tmp_path / f"{case.__name__}.ckpt").exists()
        flow, history = module.train(case)
        single = flow.state_dict()
        assert result["state"].keys() == single.keys()
        for key, value in single.items():
            torch.testing.assert_close(result["state"][key], value, rtol=1e-5, atol=1e-5, msg=f"{case.__name__}: {key}")
        assert result["history"]["epochs_run"] == history.epochs_run
        for name in ("train_nll", "val_nll"):
            torch.testing.assert_close(torch.tensor(result["history"][name]), torch.tensor(getattr(history, name)), rtol=1e-5, atol=1e-5)


def test_helpers_are_no_ops_in_a_single_process(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert not dist.launched()
    assert dist.init(torch.device("cpu")) == torch.device("cpu")
    assert (dist.rank(), dist.world_size(), dist.is_main()) == (0, 1, True)
    t = torch.tensor([1.0, 2.0])
    assert dist.all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    dist.barrier()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not dist.launched()  # torchrun with one process trains without a process group
