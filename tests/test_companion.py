"""The defensive companion: a truncated diagonal Gaussian mixture beside the flow sampler.
Its density normalises on the cube and matches its samples, the mixture's base map carries the
uniform base to (1 − α) q + α c, the fit finds known components, and a mixture saves, loads and
generates events like a flow."""

import math

import h5py
import numpy as np
import pytest
import torch

import nfapps
from nfapps.builders import NSF
from nfapps.integration import Integrator, generate_events, get_integrand
from nfapps.integration.companion import DefensiveMixture, GaussianCompanion, fit_companion


def _companion(dim: int = 2) -> GaussianCompanion:
    """Three components, one narrow against an edge and one wide, unequal weights."""
    c = GaussianCompanion(dim, 3)
    c.log_weights.copy_(torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64).log())
    c.means.copy_(torch.tensor([[0.02, 0.7], [0.5, 0.5], [0.9, 0.1]], dtype=torch.float64)[:, :dim])
    c.scales.copy_(torch.tensor([[0.03, 0.2], [0.6, 0.4], [0.1, 0.05]], dtype=torch.float64)[:, :dim])
    return c


def _grid(m: int = 800) -> tuple[torch.Tensor, float]:
    """Midpoints of an m × m grid on the unit square and the cell area."""
    t = (torch.arange(m, dtype=torch.float64) + 0.5) / m
    return torch.cartesian_prod(t, t), 1.0 / m**2


def test_companion_density_normalises_on_the_cube():
    points, area = _grid()
    mass = float(_companion().log_prob(points).exp().sum() * area)
    assert mass == pytest.approx(1.0, abs=2e-3)  # midpoint rule on a component of width 0.03


def test_companion_density_equals_the_direct_sum_even_for_the_narrowest_components():
    """log c(x), computed from one matrix product of [x, x²], against the textbook sum over
    components of Π_j φ((x_j − μ_kj)/σ_kj)/(σ_kj Z_kj), in float64 and for float32 points, with
    components as narrow as MIN_SCALE where the expansion's terms are ~10⁶ and cancel."""
    from nfapps.integration.companion import MIN_SCALE

    c = GaussianCompanion(5, 3)
    g = torch.Generator().manual_seed(7)
    c.log_weights.copy_(torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64).log())
    c.means.copy_(torch.rand(3, 5, generator=g, dtype=torch.float64))
    c.scales.copy_(torch.tensor([MIN_SCALE, 0.01, 0.3], dtype=torch.float64)[:, None].expand(3, 5))
    near = c.means[0] + MIN_SCALE * torch.randn(200, 5, generator=g, dtype=torch.float64)  # inside the narrowest
    x = torch.cat([near.clamp(0, 1), torch.rand(200, 5, generator=g, dtype=torch.float64)])
    normal = torch.distributions.Normal(c.means, c.scales)  # (K, d)
    mass = (normal.cdf(torch.ones(())) - normal.cdf(torch.zeros(()))).log().sum(1)  # log Π_j Z_kj
    direct = torch.logsumexp(normal.log_prob(x[:, None, :]).sum(2) - mass + c.log_weights, dim=1)
    assert torch.allclose(c.log_prob(x), direct, rtol=0, atol=1e-9)
    assert c.log_prob(x.float()).dtype == torch.float32
    assert torch.allclose(c.log_prob(x.float()).double(), direct, rtol=1e-6, atol=1e-4)


def test_companion_samples_follow_its_density():
    c = _companion()
    x = c.from_uniform(torch.rand(200_000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    assert bool(((x >= 0) & (x <= 1)).all())
    points, area = _grid()
    density = c.log_prob(points).exp() * area
    for h in (lambda u: u[:, 0], lambda u: u[:, 1] ** 2, lambda u: u[:, 0] * u[:, 1], lambda u: (u[:, 0] < 0.05).double()):
        exact = float((h(points) * density).sum())
        sample = h(x)
        assert abs(float(sample.mean()) - exact) < 4 * float(sample.std()) / math.sqrt(len(x)) + 1e-4


def test_fit_finds_two_known_components():
    g = torch.Generator().manual_seed(1)
    truth_means = torch.tensor([[0.3, 0.3, 0.3], [0.7, 0.6, 0.75]], dtype=torch.float64)
    pick = torch.rand(40_000, generator=g) < 0.3
    x = torch.where(pick[:, None], truth_means[0], truth_means[1]) + 0.05 * torch.randn(40_000, 3, generator=g, dtype=torch.float64)
    c = GaussianCompanion(3, 2).fit(x, torch.ones(len(x)), widen=1.0)
    order = torch.argsort(c.means[:, 0])
    assert torch.allclose(c.means[order], truth_means, atol=0.01)
    assert torch.allclose(c.scales, torch.full_like(c.scales, 0.05), rtol=0.05)
    assert torch.allclose(c.log_weights[order].exp(), torch.tensor([0.3, 0.7], dtype=torch.float64), atol=0.02)
    # the default widening is 2^(1/d) in scale
    wide = GaussianCompanion(3, 2).fit(x, torch.ones(len(x)))
    assert torch.allclose(wide.scales.sort(0).values, c.scales.sort(0).values * 2 ** (1 / 3), rtol=1e-9)
    with pytest.raises(ValueError, match="not all zero"):
        GaussianCompanion(3, 2).fit(x, torch.zeros(len(x)))


def _mixture(dim: int = 2, share: float = 0.3, seed: int = 0) -> DefensiveMixture:
    torch.manual_seed(seed)
    flow = NSF(dim, transforms=2, hidden=(16,), bins=6, bounded=True, mask="antichain")
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))  # not the identity
    flow.validate = False
    return DefensiveMixture(flow.double(), _companion(dim), share)


def test_mixture_density_normalises_and_matches_the_base_map():
    mixture = _mixture()
    points, area = _grid(400)
    with torch.no_grad():
        assert float(mixture.log_prob(points).exp().sum() * area) == pytest.approx(1.0, abs=3e-3)
        z = torch.rand(100_000, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        x, log_q = mixture.from_base(z)
        # the density reported with each point is the mixture's density there, on both branches
        assert torch.allclose(log_q, mixture.log_prob(x), atol=1e-8)
        assert 0.27 < float((z[:, 0] < 0.3).double().mean()) < 0.33
        # the uniform base is carried to q_α: E_q[h] by the points equals ∫ h q_α on the grid
        density = mixture.log_prob(points).exp() * area
    for h in (lambda u: u[:, 0], lambda u: u[:, 1] ** 2, lambda u: (u[:, 0] < 0.05).double()):
        exact = float((h(points) * density).sum())
        assert abs(float(h(x).mean()) - exact) < 4 * float(h(x).std()) / math.sqrt(len(x)) + 2e-3
    with pytest.raises(NotImplementedError, match="no inverse"):
        mixture.to_base(x)
    with pytest.raises(ValueError, match="share"):
        DefensiveMixture(mixture, _companion(), 1.0)


def test_mixture_saves_loads_and_generates_events(tmp_path):
    mixture = _mixture(share=0.2).float()
    nfapps.save(mixture, tmp_path / "m.nfapps")
    again = nfapps.load(tmp_path / "m.nfapps")
    assert isinstance(again, DefensiveMixture) and again.share == 0.2
    x, log_q = mixture.sample_and_log_prob(500, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(again.log_prob(x), log_q, atol=1e-4)
    out = tmp_path / "events.h5"
    info = generate_events(tmp_path / "m.nfapps", "gaussian-2", 2000, out, progress=False)
    with h5py.File(out) as f:
        assert f["x"].shape[1] == 2
    exact = get_integrand("gaussian-2").exact
    assert abs(info["integral"] - exact) < 5 * info["integral_error"]


def test_the_ratio_rule_measures_the_mixture_against_the_flow():
    """On points of a flow q, the measured variance ratio is that of the mixture's weights
    against the flow's: with g = q the flow is perfect (no spread: NaN, never used); with a
    target the companion fits and the flow does not, the mixture wins."""
    mixture = _mixture(share=0.1)
    flow = NSF(2, transforms=2, hidden=(16,), bins=6, bounded=True, mask="antichain").double()
    flow.load_state_dict({k: v for k, v in mixture.state_dict().items() if not k.startswith("companion")})
    flow.validate = False
    with torch.no_grad():
        u, log_q = flow.sample_and_log_prob(8000, generator=torch.Generator().manual_seed(4))
        _, ratio = fit_companion(flow, u, log_q.exp(), log_q, components=2)
        assert math.isnan(ratio)
        target = _companion()  # g = a mixture of Gaussians, which the flow does not resemble
        _, ratio = fit_companion(flow, u, target.log_prob(u).exp(), log_q, components=3)
        assert ratio < 1.0


def test_integrator_uses_the_companion_where_it_pays_and_keeps_it(tmp_path):
    f = get_integrand("camel-4")
    integrator = Integrator(f, 4, device="cpu", seed=0, grid=0)
    integrator.train(30_000, batch=512, progress=False, schedule_calls=30_000)
    result = integrator.integrate(60_000, progress=False, exact=f.exact)
    assert integrator.companion is not None and integrator.companion_ratio < 1.0
    assert result.companion_share == pytest.approx(0.1)
    assert abs(result.pull) < 4
    integrator.save(tmp_path / "state.nfapps")
    again = Integrator(f, 4, device="cpu", seed=0, grid=0).restore(tmp_path / "state.nfapps")
    assert again.companion_ratio == integrator.companion_ratio
    assert again.integrate(60_000, progress=False, exact=f.exact).value == result.value
    # trained in two pieces with a save and restore between them: the same kept points, companion and estimate
    first = Integrator(f, 4, device="cpu", seed=0, grid=0)
    first.train(15_360, batch=512, progress=False, schedule_calls=30_000)
    first.save(tmp_path / "half.nfapps")
    second = Integrator(f, 4, device="cpu", seed=0, grid=0).restore(tmp_path / "half.nfapps")
    second.train(30_000 - 15_360, batch=512, progress=False, schedule_calls=30_000)
    assert second.integrate(60_000, progress=False).value == result.value
    assert torch.equal(second.companion.means, integrator.companion.means)
    alone = Integrator(f, 4, device="cpu", seed=0, grid=0, companion=0)
    alone.train(30_000, batch=512, progress=False, schedule_calls=30_000)
    assert alone.integrate(60_000, progress=False).companion_share == 0.0 and alone.companion is None
    with pytest.raises(ValueError, match="companion"):
        Integrator(f, 4, device="cpu", companion_share=1.0)
