"""Integration under torchrun: ranks draw independent, counter-seeded points, train data-parallel,
and their tallies combine into one estimate."""

import json

import pytest
import torch
import torch.distributed
from conftest import torchrun

from nfapps.integration.estimate import Tally
from nfapps.integration.integrator import Integrator

SCRIPT = '''
import json, sys
import torch
from nfapps.integration.integrator import Integrator
import nfapps.distributed as dist

torch.set_num_threads(1)

def product(x):
    return (2 * x).prod(dim=1)

def steep(x):
    return (5 * x**4).prod(dim=1)

out, train_calls = sys.argv[1], int(sys.argv[2])
integrator = Integrator(steep if train_calls else product, 3, seed=7, transforms=2, hidden=(16,), pre_map=0)
if train_calls:
    integrator.adapt_grid(16_384, progress=False)
    integrator.train(train_calls, batch=1024, reuse=2, progress=False, schedule_calls=train_calls)
result = integrator.integrate(20_000, batch=4096, progress=False, exact=1.0)
weights = [p.detach().sum().item() for p in integrator.flow.parameters()]
state = {"weights": weights, "edges": integrator.grid.transform[0].edges.tolist(), "stopped": integrator.stopped,
         "history": integrator.history}
everyone = [None, None]
torch.distributed.all_gather_object(everyone, state)
assert everyone[0]["weights"] == everyone[1]["weights"], "the ranks' samplers diverged: gradients were not averaged"
assert everyone[0] == everyone[1], "the ranks' grids, histories or decisions diverged"
if dist.is_main():
    json.dump({**result.to_dict(), "world": integrator.world_size, "weights": weights, "stopped": integrator.stopped},
              open(out, "w"))
'''


def product(x):
    return (2 * x).prod(dim=1)


def _torchrun(tmp_path, train_calls):
    script = tmp_path / "nis_script.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"result-{train_calls}.json"
    torchrun(str(script), str(out), str(train_calls))
    return json.loads(out.read_text())


pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="this torch build has no torch.distributed with the gloo backend",
)


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    return _torchrun(tmp_path_factory.mktemp("untrained"), train_calls=0)


def test_two_ranks_combine_their_tallies_exactly(untrained):
    result = untrained
    assert result["world"] == 2 and result["tally"]["n"] == 20_000
    # The same two ranks' shares, computed one after the other in this process, give the same sums.
    tallies = [
        Integrator(product, 3, seed=7, transforms=2, hidden=(16,), pre_map=0, rank=r, world_size=2)
        .integrate(20_000, batch=4096, progress=False).tally
        for r in (0, 1)
    ]
    combined = Tally(**tallies[0]).merge(Tally(**tallies[1]))
    assert combined.n == 20_000
    assert result["value"] == pytest.approx(combined.mean, rel=1e-12)
    assert result["error"] == pytest.approx(combined.error, rel=1e-9)
    assert abs(result["pull"]) < 4


def test_data_parallel_training_gives_an_honest_estimate(tmp_path, untrained):
    # the grid adapts on 16 384 calls (over both ranks); on this separable integrand (Π 5x⁴) the flow
    # gives up against it part-way through its 24 batches, on both ranks at once
    result = _torchrun(tmp_path, train_calls=24 * 1024)
    grid = 16_384
    assert result["calls_grid"] == grid and result["stopped"] and result["sampler"] == "grid"
    assert (result["calls_training"] - grid) % 1024 == 0 and grid + 16 * 1024 <= result["calls_training"] < grid + 24 * 1024
    assert result["calls_estimate"] + result["calls_pilot"] == 20_000
    assert abs(result["pull"]) < 4
    assert result["weights"] != untrained["weights"]  # the sampler did train
