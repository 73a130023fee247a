"""Neural importance sampling core: tallies, unweighting efficiencies, the checked integrand,
and estimates that are right (unbiased, honest errors) whatever the sampler."""

import math

import numpy as np
import pytest
import torch
from conftest import perturb

from nfapps.builders import NSF
from nfapps.integration.estimate import (
    Tally,
    bootstrap_unweighting_efficiency,
    overweight_cap,
    truncated_unweighting_efficiency,
    unweighting_efficiency,
)
from nfapps.integration.integrand import IntegrandError, UnitCubeIntegrand, load_callable
from nfapps.integration.integrator import Integrator, integrate

ALPHA = 0.2


def gaussian(x):
    d = x.shape[1]
    return torch.exp(-((x - 0.5) ** 2).sum(1) / ALPHA**2) / (ALPHA * math.sqrt(math.pi)) ** d


def product(x):
    return (2 * x).prod(dim=1)  # ∫_{[0,1]^d} = 1


def test_tally_matches_numpy_and_merges():
    w = np.random.default_rng(0).lognormal(0, 1, 1001)
    t = Tally().add(w[:400]).merge(Tally().add(w[400:]))
    assert t.n == 1001
    assert t.mean == pytest.approx(w.mean(), rel=1e-12)
    assert t.std == pytest.approx(w.std(ddof=1), rel=1e-10)
    assert t.error == pytest.approx(w.std(ddof=1) / math.sqrt(1001), rel=1e-10)
    assert t.effective_sample_size == pytest.approx(w.sum() ** 2 / (w**2).sum(), rel=1e-12)


def test_unweighting_efficiencies():
    assert unweighting_efficiency(np.ones(100)) == 1.0
    assert truncated_unweighting_efficiency(np.ones(100)) == pytest.approx(1.0)
    w = np.random.default_rng(1).lognormal(0, 1.5, 50_000)
    for delta in (1e-3, 1e-2):
        cap = overweight_cap(w, delta)
        assert np.maximum(w - cap, 0).sum() / w.sum() == pytest.approx(delta, rel=1e-9)
        assert np.maximum(w - cap * (1 - 1e-6), 0).sum() / w.sum() > delta  # and no smaller cap will do
        assert truncated_unweighting_efficiency(w, delta) == pytest.approx(np.minimum(w, cap).mean() / cap, rel=1e-12)
    assert unweighting_efficiency(w) < bootstrap_unweighting_efficiency(w, 1000) < 1
    assert unweighting_efficiency(w) < truncated_unweighting_efficiency(w)


def test_integrand_maps_the_box_and_accepts_numpy():
    g = UnitCubeIntegrand(lambda x: np.ones(len(x)), 2, bounds=[(0, 2), (1, 4)], backend="numpy")
    torch.testing.assert_close(g(torch.rand(5, 2)), torch.full((5,), 6.0, dtype=torch.float64))
    h = UnitCubeIntegrand(lambda x: x[:, 0], 1, bounds=[(-1, 1)])
    torch.testing.assert_close(h(torch.tensor([[0.0], [1.0]])), torch.tensor([-2.0, 2.0], dtype=torch.float64))


@pytest.mark.parametrize(
    "f,dim,bounds,message",
    [
        (lambda x: torch.where(x[:, 0] > 0.5, math.nan, 1.0), 2, None, "returned nan at x = \\["),
        (lambda x: x, 2, None, "returned shape \\(4, 2\\) for 4 points"),
        (lambda x: 1 / 0, 2, None, "raised ZeroDivisionError"),
    ],
)
def test_bad_integrands_are_reported(f, dim, bounds, message):
    g = UnitCubeIntegrand(f, dim, bounds, backend="torch")
    with pytest.raises(IntegrandError, match=message):
        g(torch.linspace(0, 1, 8, dtype=torch.float64).reshape(4, 2))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"dim": 0}, "dim must be a positive integer"),
        ({"dim": 2, "bounds": [(0, 1)]}, "bounds must be 2 pairs"),
        ({"dim": 2, "bounds": [(0, 1), (3, 2)]}, "dimension 1 .*low < high"),
        ({"dim": 1, "bounds": [(0, math.inf)]}, "finite"),
    ],
)
def test_bad_dimensions_and_bounds(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UnitCubeIntegrand(product, **kwargs)


def test_load_callable(tmp_path):
    assert load_callable("math:sqrt")(4.0) == 2.0
    file = tmp_path / "mine.py"
    file.write_text("def f(x):\n    return x.sum(1)\n")
    assert callable(load_callable(f"{file}:f"))
    for spec, message in [("math", "module:function"), ("math:nope", "no function"), ("nosuchmodule:f", "could not import"),
                          (f"{tmp_path}/missing.py:f", "does not exist")]:
        with pytest.raises(ValueError, match=message):
            load_callable(spec)


def _poor_sampler(dim, seed, scale=0.3):
    torch.manual_seed(seed)
    flow = NSF(dim, bins=8, transforms=2, hidden=(16,), bounded=True)
    perturb(flow, scale, seed=seed)  # a random, badly matched sampler that still covers the cube
    return flow


def test_poor_sampler_gives_the_right_answer_with_a_wider_error():
    exact = math.erf(1 / (2 * ALPHA)) ** 2
    poor = Integrator(gaussian, 2, flow=_poor_sampler(2, 0), seed=0).integrate(40_000, progress=False, exact=exact)
    uniform = Integrator(gaussian, 2, seed=0).integrate(40_000, progress=False, exact=exact)
    for result in (poor, uniform):
        assert abs(result.pull) < 4, result
    assert poor.relative_std > 1.0  # worse than a good sampler, but honest


def test_pulls_over_seeds_are_standard_normal():
    pulls = []
    for seed in range(40):
        sampler = _poor_sampler(3, seed, scale=0.1)  # random, mismatched (σ/I ≈ 1.4 against 0.6 uniform)
        r = Integrator(product, 3, flow=sampler, seed=seed).integrate(2000, progress=False, exact=1.0)
        pulls.append(r.pull)
    pulls = np.array(pulls)
    print(f"pulls over 40 seeds: mean {pulls.mean():.3f}, std {pulls.std(ddof=1):.3f}")
    assert abs(pulls.mean()) < 0.4 and 0.7 < pulls.std(ddof=1) < 1.35 and np.abs(pulls).max() < 5


def test_training_reduces_the_variance_and_the_estimate_stays_right():
    exact = math.erf(1 / (2 * ALPHA)) ** 2
    before = Integrator(gaussian, 2, seed=1).integrate(20_000, progress=False)
    result = integrate(gaussian, 2, calls=80_000, training_fraction=0.5, batch=1024, reuse=4, lr=3e-3,
                       seed=1, progress=False, exact=exact)
    print(f"relative std per event: untrained {before.relative_std:.3f}, trained {result.relative_std:.3f}")
    assert result.relative_std < before.relative_std / 3
    assert abs(result.pull) < 4
    assert result.calls_training == 39 * 1024 and result.calls_estimate == 80_000 - 39 * 1024


def test_box_bounds_and_signed_integrands():
    # ∫_{-1}^{2} x dx = 1.5: sign-changing, on a box
    r = integrate(lambda x: x[:, 0], 1, bounds=[(-1, 2)], calls=20_000, training_fraction=0.3, batch=1000,
                  seed=0, progress=False, exact=1.5)
    assert abs(r.pull) < 4 and r.error < 0.05


def test_save_and_restore_continue_bit_identically(tmp_path):
    straight = Integrator(gaussian, 2, seed=3, transforms=2, hidden=(16,))
    straight.train(4096, batch=1024, reuse=2, lr=3e-3, progress=False)

    first = Integrator(gaussian, 2, seed=3, transforms=2, hidden=(16,))
    first.train(2048, batch=1024, reuse=2, lr=3e-3, progress=False)
    first.save(tmp_path / "state.nfapps")
    resumed = Integrator(gaussian, 2, seed=3, transforms=2, hidden=(16,)).restore(tmp_path / "state.nfapps")
    resumed.train(2048, batch=1024, reuse=2, lr=3e-3, progress=False)

    for a, b in zip(straight.flow.state_dict().values(), resumed.flow.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed.calls_training == straight.calls_training == 4096
    r1, r2 = straight.integrate(5000, progress=False), resumed.integrate(5000, progress=False)
    assert r1.value == r2.value and r1.error == r2.error
    with pytest.raises(ValueError, match="another run"):
        Integrator(gaussian, 2, seed=4).restore(tmp_path / "state.nfapps")
