"""The VEGAS grid (AdaptiveGrid / VegasGrid) and the tempered training target of the integrator."""

import math

import numpy as np
import pytest
import torch

import nfapps
from nfapps import VegasGrid
from nfapps.integration import INTEGRANDS
from nfapps.integration.estimate import pareto_tail_index
from nfapps.integration.integrator import Integrator
from nfapps.integration.tempering import ess_fraction, tempered_weights, tempering_exponent
from nfapps.transforms.grid import AdaptiveGrid


def _beta25(x):
    """Π_i Beta(2, 5)(x_i): a separable density on [0, 1]^d with integral 1."""
    return (30 * x * (1 - x) ** 4).prod(dim=1)


def _relative_std(sampler, f, n=20_000, seed=0):
    with torch.no_grad():
        x, log_q = sampler.sample_and_log_prob(n, generator=torch.Generator().manual_seed(seed))
    w = f(x) / log_q.exp()
    return (w.std() / w.mean()).item(), w.mean().item(), (w.std() / math.sqrt(n)).item()


def test_a_grid_learns_a_separable_density():
    torch.manual_seed(0)
    sampler = VegasGrid(3, bins=64).double()
    grid = sampler.transform[0]
    before, _, _ = _relative_std(sampler, _beta25)
    for k in range(15):
        with torch.no_grad():
            x, log_q = sampler.sample_and_log_prob(4000, generator=torch.Generator().manual_seed(100 + k))
        grid.accumulate(x, _beta25(x) / log_q.exp())
        grid.refine()
    after, mean, error = _relative_std(sampler, _beta25)
    print(f"relative std per event: uniform {before:.3f}, adapted grid {after:.3f}")
    # the product of the marginals is the optimum; 64 constant pieces of a density that vanishes at
    # both ends leave about 0.22 (what 40 iterations reach too)
    assert after < 0.3 and before > 2
    assert abs(mean - 1.0) < 5 * error
    edges = grid.edges
    assert torch.all(edges[:, 1:] > edges[:, :-1]) and torch.all(edges[:, 0] == 0) and torch.all(edges[:, -1] == 1)
    assert grid.counts.sum() == 0 and grid.sum_w2.sum() == 0  # refine starts the next iteration afresh


def test_the_grid_stays_a_valid_map_without_points_or_with_zero_weights():
    grid = AdaptiveGrid(2, bins=8)
    grid.refine()  # nothing accumulated: the grid stays as it was
    torch.testing.assert_close(grid.edges, torch.linspace(0, 1, 9, dtype=torch.float64).expand(2, 9))
    x = torch.rand(500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grid.accumulate(x, torch.where(x[:, 0] < 0.25, 1.0, 0.0).to(torch.float64))  # zero on 3/4 of axis 0
    grid.refine()
    widths = grid.edges.diff(dim=1)
    assert torch.all(widths > 0) and torch.isfinite(grid(x)[1]).all()
    assert grid.edges[0, -2] < 0.5  # the bins gathered where the weight is


def test_the_grid_saves_its_edges_and_unfinished_iteration(tmp_path):
    sampler = VegasGrid(2, bins=16)
    grid = sampler.transform[0]
    x = torch.rand(300, 2, generator=torch.Generator().manual_seed(0))
    grid.accumulate(x, x[:, 0] ** 2)
    grid.refine()
    grid.accumulate(x, x[:, 1])  # half-way through the next iteration
    nfapps.save(sampler, tmp_path / "grid.nfapps")
    loaded = nfapps.load(tmp_path / "grid.nfapps")
    other = loaded.transform[0]
    for name in ("edges", "sum_w2", "counts"):
        assert torch.equal(getattr(grid, name), getattr(other, name))


def test_grid_argument_errors():
    with pytest.raises(ValueError, match="bins ≥ 1"):
        AdaptiveGrid(2, bins=0)
    with pytest.raises(ValueError, match="alpha"):
        AdaptiveGrid(2, alpha=-1)
    with pytest.raises(ValueError, match=r"x \(n, 2\)"):
        AdaptiveGrid(2).accumulate(torch.rand(4, 3), torch.ones(4))
    with pytest.raises(ValueError, match="no VEGAS grid"):
        Integrator(lambda x: x[:, 0], 2, grid=0).adapt_grid(1000)


def test_tempering_keeps_the_effective_sample_size_and_only_when_needed():
    g = torch.Generator().manual_seed(0)
    log_q = torch.zeros(2000, dtype=torch.float64)
    healthy = 1 + 0.5 * torch.rand(2000, generator=g, dtype=torch.float64)
    assert tempering_exponent(healthy, log_q, 0.0, 0.05) == 1.0
    degenerate = torch.exp(-40 * torch.rand(2000, generator=g, dtype=torch.float64))  # weight on a few points
    degenerate[::7] = 0.0  # zeros stay zeros at any exponent
    assert ess_fraction(degenerate) < 0.05
    beta = tempering_exponent(degenerate, log_q, 0.0, 0.05)
    assert 0 < beta < 1
    assert ess_fraction(tempered_weights(degenerate, log_q, beta)) >= 0.05 > ess_fraction(tempered_weights(degenerate, log_q, beta + 0.01))
    assert torch.all(tempered_weights(degenerate, log_q, beta)[::7] == 0)
    assert tempering_exponent(degenerate, log_q, 0.9, 0.05) == 0.9  # β never goes back
    assert tempering_exponent(degenerate, log_q, 0.0, 0.0) == 1.0  # min_ess = 0 turns tempering off
    # a ceiling (the ramp) holds β below it, even where the weights would allow more ...
    assert tempering_exponent(healthy, log_q, 0.2, 0.05, ceiling=0.3) == 0.3
    assert tempering_exponent(degenerate, log_q, 0.0, 0.05, ceiling=beta / 2) == beta / 2
    assert tempering_exponent(degenerate, log_q, 0.0, 0.05, ceiling=0.99) == pytest.approx(beta, abs=1e-3)  # no floor
    assert tempering_exponent(healthy, log_q, 0.2, 0.05, ceiling=0.1) == 0.2  # and never lowers β
    # the tempered weights are those of |g|^β under q: |w|^β q^(β−1) = |g|^β / q
    log_q = torch.log(0.5 + torch.rand(2000, generator=g, dtype=torch.float64))
    values = degenerate * log_q.exp()
    torch.testing.assert_close(tempered_weights(degenerate, log_q, 0.3), values.abs() ** 0.3 / log_q.exp())


def test_tempering_keeps_the_grid_on_every_mode():
    """camel-16 has a peak at (⅓, …, ⅓) and one at (⅔, …, ⅔). Fed VEGAS's w² of uniform points,
    whose weight sits on a few points near one peak, every axis of the grid collapses onto that
    peak and the other is never sampled again (the estimate then misses half the integral, with
    a small error bar); tempered, every axis keeps half its bins on each side."""
    f = INTEGRANDS["camel-16"]
    share_below_half = {}
    for min_ess in (0.0, 0.05):
        integrator = Integrator(f, 16, seed=0, device="cpu", transforms=2, hidden=(8,))
        integrator.adapt_grid(50_000, progress=False, min_ess=min_ess)
        edges = integrator.grid.transform[0].edges
        share_below_half[min_ess] = (edges < 0.5).double().mean(dim=1)  # probability below ½, per axis
        exponents = [r["exponent"] for r in integrator.history]
    assert share_below_half[0.0].min() > 0.8  # collapsed onto the peak at ⅓
    assert share_below_half[0.05].min() > 0.4 and share_below_half[0.05].max() < 0.6
    assert 0 < exponents[0] <= exponents[-1] < 1  # tempered all along: this grid's weights stay degenerate


def test_pareto_tail_index_measures_the_tail():
    rng = np.random.default_rng(0)
    assert abs(pareto_tail_index(rng.pareto(1.5, 40_000)) - 1 / 1.5) < 0.15  # Lomax(α): k = 1/α
    assert abs(pareto_tail_index(rng.exponential(size=40_000))) < 0.15  # light tail: k = 0
    assert pareto_tail_index(rng.uniform(size=40_000)) < -0.5  # bounded: k < 0
    assert math.isnan(pareto_tail_index(np.ones(1000))) and math.isnan(pareto_tail_index(rng.exponential(size=50)))


def test_the_pilots_prefer_light_tails():
    """A pilot whose weights have a heavy tail (Pareto k̂ ≥ 0.7) is passed over, however small its
    measured spread; if every pilot has one, the lightest tail wins."""
    from nfapps.integration.estimate import Tally
    from nfapps.integration.integrator import _choose

    rng = np.random.default_rng(0)
    light = rng.uniform(0, 2, 4000)  # relative spread 0.58, bounded (k̂ < 0)
    heavy = 1 + 0.01 * rng.pareto(1.2, 4000)  # a small spread, but a Pareto tail (k = 0.83)
    heavier = 1 + 0.001 * rng.pareto(0.6, 4000)  # k = 1.67

    def tallies(weights):
        return {name: Tally().add(torch.from_numpy(w)) for name, w in weights.items()}

    pair = {"light": light, "heavy": heavy}
    assert tallies(pair)["heavy"].relative_std < tallies(pair)["light"].relative_std / 3
    assert _choose(tallies(pair), pair) == "light"
    both = {"heavy": heavy, "heavier": heavier}
    assert _choose(tallies(both), both) == "heavy"
