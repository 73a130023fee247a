"""Neural importance sampling core: tallies, unweighting efficiencies, the checked integrand,
and estimates that are right (unbiased, honest errors) whatever the sampler."""

import math

import numpy as np
import pytest
import torch
from conftest import perturb

from nfapps.builders import NSF
from nfapps.transforms.base import Inverse
from nfapps.integration.estimate import (
    Tally,
    batch_sizes,
    batch_weights,
    bootstrap_unweighting_efficiency,
    even_batch_sizes,
    overweight_cap,
    ramped_batch_sizes,
    truncated_unweighting_efficiency,
    unweighting_efficiency,
)
from nfapps.integration.integrand import IntegrandError, UnitCubeIntegrand, load_callable
from nfapps.integration.integrands import get_integrand
from nfapps.integration.integrator import Integrator, integrate, sampler_size
from nfapps.integration.stratify import Strata, allocation_gain, cells_per_dimension

ALPHA = 0.2


def gaussian(x):
    d = x.shape[1]
    return torch.exp(-((x - 0.5) ** 2).sum(1) / ALPHA**2) / (ALPHA * math.sqrt(math.pi)) ** d


def product(x):
    return (2 * x).prod(dim=1)  # ∫_{[0,1]^d} = 1


def test_tally_matches_numpy_and_merges():
    w = np.random.default_rng(0).lognormal(0, 1, 1001)
    whole = Tally().add(w)
    assert whole.std == pytest.approx(w.std(ddof=1), rel=1e-10)
    assert whole.error == pytest.approx(w.std(ddof=1) / math.sqrt(1001), rel=1e-10)
    t = Tally().add(w[:400]).merge(Tally().add(w[400:]))
    assert t.n == 1001
    assert t.mean == pytest.approx(w.mean(), rel=1e-12)
    # two batches, two groups: Var(Î) = (400 s₁² + 601 s₂²) / N²
    pooled = 400 * w[:400].var(ddof=1) + 601 * w[400:].var(ddof=1)
    assert t.error == pytest.approx(math.sqrt(pooled) / 1001, rel=1e-10)
    assert t.std == pytest.approx(math.sqrt(pooled / 1001), rel=1e-10)
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
    poor = Integrator(gaussian, 2, flow=_poor_sampler(2, 0), seed=0)
    uniform = Integrator(gaussian, 2, seed=0)
    results = [sampler.integrate(40_000, progress=False, exact=exact, stratify=stratify)
               for sampler in (poor, uniform) for stratify in (False, True)]
    for result in results:
        assert abs(result.pull) < 4, result
    assert results[0].relative_std > 1.0  # worse than a good sampler, but honest
    assert results[1].relative_std < results[0].relative_std / 3  # stratification makes up for much of it


@pytest.mark.parametrize("stratify", [False, True])
def test_pulls_over_seeds_are_standard_normal(stratify):
    pulls = []
    for seed in range(40):
        sampler = _poor_sampler(3, seed, scale=0.1)  # random, mismatched (σ/I ≈ 1.4 against 0.6 uniform)
        r = Integrator(product, 3, flow=sampler, seed=seed).integrate(2000, progress=False, exact=1.0, stratify=stratify)
        pulls.append(r.pull)
    pulls = np.array(pulls)
    print(f"pulls over 40 seeds: mean {pulls.mean():.3f}, std {pulls.std(ddof=1):.3f}")
    assert abs(pulls.mean()) < 0.4 and 0.7 < pulls.std(ddof=1) < 1.35 and np.abs(pulls).max() < 5


def test_training_reduces_the_variance_and_the_estimate_stays_right():
    exact = math.erf(1 / (2 * ALPHA)) ** 2
    # unstratified, to see what the training alone does (in 2-D stratification alone does a lot);
    # no grid, which would win on this separable integrand and end the flow's training early
    before = Integrator(gaussian, 2, seed=1).integrate(20_000, progress=False, stratify=False)
    result = integrate(gaussian, 2, calls=80_000, training_fraction=0.5, batch=1024, reuse=4, lr=3e-3,
                       seed=1, progress=False, exact=exact, stratify=False, grid=0)
    print(f"relative std per event: untrained {before.relative_std:.3f}, trained {result.relative_std:.3f}")
    assert result.relative_std < before.relative_std / 3
    assert abs(result.pull) < 4
    assert result.calls_grid == 0 and result.calls_training == 39 * 1024
    assert result.calls_estimate + result.calls_pilot == 80_000 - 39 * 1024
    assert result.sampler == "flow" and result.calls_pilot == 2 * ((80_000 - 39 * 1024) // 16)  # flow, uniform


def _steep_product(x):
    """Π 5 x_i⁴ on [0, 1]^d: separable, integral 1."""
    return (5 * x**4).prod(dim=1)


def test_the_grid_adapts_first_and_a_flow_that_loses_to_it_stops_training():
    """On a separable integrand the grid wins: it adapts first, the flow trains after it until a
    quarter of its schedule shows it still varies GIVE_UP_MARGIN times more than the grid, and
    every call it did not spend goes to the estimate, which the grid then draws."""
    integrator = Integrator(_steep_product, 3, seed=7, transforms=2, hidden=(16,), device="cpu")
    integrator.adapt_grid(16_000, progress=False)
    assert integrator.calls_grid == 16_000 and [r["phase"] for r in integrator.history] == ["grid"] * 12
    assert integrator.history[-1]["relative_std"] < integrator.history[0]["relative_std"] / 3
    integrator.train(64 * 1024, batch=1024, progress=False, schedule_calls=64 * 1024)
    flow_batches = [r for r in integrator.history if r["phase"] == "flow"]
    assert integrator.stopped and 16 <= len(flow_batches) < 64 and integrator.calls_training == 1024 * len(flow_batches)
    assert integrator.train(1024, progress=False, schedule_calls=64 * 1024) and integrator.calls_training == 1024 * len(flow_batches)
    result = integrator.integrate(200_000 - 16_000 - integrator.calls_training, progress=False, exact=1.0)
    assert result.sampler == "grid" and abs(result.pull) < 4
    assert result.calls_training + result.calls_pilot + result.calls_estimate == 200_000


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


def test_cells_per_dimension_leave_two_points_in_every_cube():
    assert cells_per_dimension(65_536, 2) == [181, 181] and cells_per_dimension(65_536, 8) == [4] * 5 + [3] * 3
    assert cells_per_dimension(65_536, 2, per_cell=4) == [128, 128]
    assert cells_per_dimension(2**18, 18) == [2] * 17 + [1]  # two cells along as many axes as fit
    assert cells_per_dimension(3, 1) == [1] and cells_per_dimension(4, 1) == [2] and cells_per_dimension(1, 3) == [1, 1, 1]
    for n, d in [(1000, 3), (1001, 3), (999, 3), (2 * 5**4, 4), (2 * 5**4 - 1, 4), (10**5, 7)]:
        cells = cells_per_dimension(n, d)
        assert 2 * math.prod(cells) <= n and max(cells) - min(cells) <= 1
        bigger = [c + 1 if j == cells.index(min(cells)) else c for j, c in enumerate(cells)]
        assert 2 * math.prod(bigger) > n  # no cell more would fit


def test_strata_fill_every_cube_and_allocate_by_spread():
    strata = Strata([4, 4, 4], beta=1.0)
    counts = strata.allocate(2 * 4**3 + 5)
    assert counts.sum() == 133 and counts.min() == 2 and counts.max() == 3  # equal shares before any measurement
    z = strata.points(counts, torch.Generator().manual_seed(0))
    assert z.shape == (133, 3) and z.dtype == torch.float32 and bool(((z >= 0) & (z <= 1)).all())
    cube = ((z.double() * 4).floor().long().clamp(max=3) * torch.tensor([1, 4, 16])).sum(1)
    assert cube.tolist() == torch.repeat_interleave(torch.arange(64), counts).tolist()  # cube by cube
    # weights that vary only in cube 5 (σ = 1 there, 0 elsewhere): its share of the spare points
    w = torch.zeros(133, dtype=torch.float64)
    w[counts[:5].sum():counts[:6].sum()] = torch.tensor([1.0, -1.0, 1.0][: int(counts[5])])
    strata.update(w, counts)
    counts = strata.allocate(1000)
    smooth = strata.smoothed_spread()  # σ̃: cube 5 = (1, 1, 0) and its neighbours
    assert int(smooth.argmax()) == 5 and int((smooth > 0).sum()) == 3 * 3 * 2
    expected = 2 + (1000 - 2 * 64) * smooth / smooth.sum()
    assert int(counts.sum()) == 1000 and float((counts - expected).abs().max()) < 1
    assert (counts[smooth == 0] == 2).all() and int(counts.argmax()) == 5
    rescaled = strata.rescale(torch.ones(1000, dtype=torch.float64), counts)
    assert float(rescaled.mean()) == pytest.approx(1.0)  # Σ_h p_h · (mean of w̃ / (n p_h / n_h)) = 1
    with pytest.raises(ValueError, match="two"):
        strata.allocate(100)
    mixed = Strata([3, 2])  # cells differ along the axes: cube h = i + 3 j
    z = mixed.points(torch.full((6,), 2), torch.Generator().manual_seed(1)).double()
    cube = (z[:, 0] * 3).floor().long() + 3 * (z[:, 1] * 2).floor().long()
    assert cube.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_estimate_batches_are_even_or_ramp_up():
    assert even_batch_sizes(437_000, 262_144) == [218_500, 218_500] and even_batch_sizes(7, 3) == [3, 2, 2]
    assert ramped_batch_sizes(437_000, 262_144) == [32_768, 65_536, 131_072, 207_624]
    ramp = ramped_batch_sizes(10_000_000, 262_144)
    assert sum(ramp) == 10_000_000 and max(ramp) <= 262_144 and ramp[:3] == [32_768, 65_536, 131_072]
    assert ramped_batch_sizes(3, 100) == [3] and even_batch_sizes(2, 2) == [2]
    for sizes in (even_batch_sizes, ramped_batch_sizes):
        with pytest.raises(ValueError, match="at least 2"):
            sizes(1, 8)


def test_finer_strata_inherit_the_spread_of_the_coarse_cube_they_lie_in():
    coarse = Strata([2, 3])
    coarse._squares = torch.arange(6, dtype=torch.float64) ** 2 * 4  # σ_h = h, from 5 points (4 dof) each
    coarse._dof = torch.full((6,), 4.0, dtype=torch.float64)
    fine = Strata([4, 6]).inherit(coarse)
    sigma = (fine._squares / fine._dof).sqrt().view(6, 4).T  # [j0, j1]: cube j0 + 4 j1
    expected = torch.tensor([[j0 // 2 + 2 * (j1 // 2) for j1 in range(6)] for j0 in range(4)], dtype=torch.float64)
    assert torch.equal(sigma, expected)
    assert float(fine._dof.sum()) == 24  # one degree of freedom each: the fine cubes' own batches soon outweigh it
    # which has equal cubes, so the allocation follows the coarse spread, two points at least
    counts = fine.allocate(2 * 24 + 1000).view(6, 4).T
    assert counts.min() >= 2 and int(counts.sum()) == 1048
    assert counts[1, 5] > counts[1, 2] > counts[0, 0]
    with pytest.raises(ValueError, match="dimensions"):
        Strata([4, 4, 4]).inherit(coarse)


def test_finer_strata_sort_the_points_kept_by_coarser_ones_into_their_cubes():
    coarse = Strata([2, 2], keep_points=True)
    counts = torch.full((4,), 6)
    z = coarse.points(counts, torch.Generator().manual_seed(2))
    w = torch.rand(24, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    coarse.update(w, counts, z)
    with pytest.raises(ValueError, match="points"):
        coarse.update(w, counts)  # a keeping stratum needs the points
    fine = Strata([4, 3], keep_points=True).inherit(coarse, dof=0.0)  # no prior: the points alone
    cube = (z[:, 0].double() * 4).floor().long() + 4 * (z[:, 1].double() * 3).floor().long()
    for h in range(12):
        mine = w[cube == h]
        assert float(fine._dof[h]) == max(len(mine) - 1, 0)
        expected = float(((mine - mine.mean()) ** 2).sum()) if len(mine) else 0.0
        assert float(fine._squares[h]) == pytest.approx(expected, abs=1e-12)
    assert torch.equal(fine.cube_of(z), cube)
    # the finer stratum keeps them for the next one, and a checkpoint carries them
    state = Strata.from_state(fine.state(), beta=1.0)
    assert state.keep_points and torch.equal(torch.cat(state._points), z) and torch.equal(torch.cat(state._weights), w)
    fine.forget_points()
    assert not fine.keep_points and Strata([8, 8]).inherit(fine)._dof.sum() == 64  # the prior only


def test_batches_combine_with_weights_fixed_by_their_sizes():
    assert batch_weights([1, 2, 4], 1.0) == pytest.approx([1 / 7, 2 / 7, 4 / 7])
    assert batch_weights([2, 4], 2.0, settled=0.5) == pytest.approx([0.1, 0.4])  # the rest after a settled half
    with pytest.raises(ValueError, match="settled"):
        batch_weights([2, 4], 1.0, settled=1.0)
    # an adaptive estimate (a probe of 250, then a ramp): Î = Σ_k λ_k Î_k over its batches
    integrator = Integrator(_spike, 2, seed=0)
    result = integrator.integrate(8000, batch=2000, progress=False, exact=SPIKE_EXACT)
    ramp = ramped_batch_sizes(7750, 2000)
    settled = batch_weights([250, *even_batch_sizes(7750, 2000)], 2.0)[0]  # γ = 1 + 2/d
    weights = [settled, *batch_weights(ramp, 2.0, settled)]
    batches = np.split(integrator.estimate_weights, np.cumsum([250, *ramp])[:-1])
    assert result.points_per_cube == 4 and len(batches) == len(weights) == 1 + len(ramp)
    assert result.value == pytest.approx(sum(lam * b.mean() for lam, b in zip(weights, batches)), rel=1e-12)
    assert result.value != pytest.approx(integrator.estimate_weights.mean(), rel=1e-6)
    pooled = integrator.integrate(8000, batch=2000, progress=False, exact=SPIKE_EXACT, weight_exponent=1.0)
    assert pooled.value == pytest.approx(integrator.estimate_weights.mean(), rel=1e-12)  # γ = 1: every point alike
    with pytest.raises(ValueError, match="weight_exponent"):
        integrator.integrate(8000, progress=False, weight_exponent=-1.0)


def test_the_allocation_follows_the_spread_smoothed_over_neighbours():
    strata = Strata([5, 2])
    strata._squares = torch.zeros(10, dtype=torch.float64)
    strata._squares[2] = 16.0  # σ = 4 in cube (2, 0) only, from two points (one dof)
    strata._dof = torch.ones(10, dtype=torch.float64)
    smooth = strata.smoothed_spread().view(2, 5)  # [j1, j0]
    # (¼, ½, ¼) along the axis of five cells, nothing along the axis of two; a cube keeps its own spread
    assert torch.equal(smooth, torch.tensor([[0, 1, 4, 1, 0], [0, 0, 0, 0, 0]], dtype=torch.float64))
    counts = strata.allocate(2 * 10 + 60).view(2, 5)
    assert counts.tolist() == [[2, 12, 42, 12, 2], [2, 2, 2, 2, 2]]  # the neighbours of the edge get points too


def test_allocation_gain():
    flat = Strata([10])
    flat._squares, flat._dof = torch.full((10,), 3.0, dtype=torch.float64), torch.ones(10, dtype=torch.float64)
    assert allocation_gain(flat.spread_moments()) == pytest.approx(1.0)
    flat._squares[1:] = 0  # all the spread in one cube of ten: allocating by σ_h keeps a tenth of the variance
    assert allocation_gain(flat.spread_moments()) == pytest.approx(0.1)
    flat._squares[:] = 0
    assert math.isnan(allocation_gain(flat.spread_moments()))


def _spike(x):
    """A narrow peak, exp(−|x − ½|²/0.05²), in the unit square; ∫ ≈ π·0.05² (its tails are cut
    off at the square's edges only at 10 widths)."""
    return torch.exp(-((x - 0.5) ** 2).sum(1) / 0.05**2)


SPIKE_EXACT = math.pi * 0.05**2 * math.erf(0.5 / 0.05) ** 2


def test_a_narrow_peak_gets_an_adaptive_allocation_and_honest_errors():
    """Under uniform points a narrow peak's weights vary in a few cubes only: the first batch
    measures that (allocation gain below 0.4), the later batches put most of their points there,
    and the variance falls well below equal allocation's (at 10⁵ points in batches of 2·10⁴:
    σ/I·√N ≈ 0.38 against 0.63); the errors stay honest."""
    equal = Integrator(_spike, 2, seed=0).integrate(100_000, batch=20_000, progress=False, exact=SPIKE_EXACT, per_cube=2)
    adaptive = Integrator(_spike, 2, seed=0).integrate(100_000, batch=20_000, progress=False, exact=SPIKE_EXACT)
    assert (equal.points_per_cube, adaptive.points_per_cube) == (2, 4)
    assert adaptive.relative_std < 0.75 * equal.relative_std, (adaptive.relative_std, equal.relative_std)
    assert adaptive.tally["n"] == adaptive.calls_estimate == 100_000 and abs(adaptive.pull) < 4
    # smooth weights keep equal allocation over the finest cubes
    assert Integrator(product, 2, seed=0).integrate(20_000, progress=False).points_per_cube == 2
    results = [Integrator(_spike, 2, seed=seed).integrate(8000, batch=2000, progress=False, exact=SPIKE_EXACT)
               for seed in range(40)]
    pulls = np.array([r.pull for r in results])
    print(f"peak pulls over 40 seeds: mean {pulls.mean():.3f}, std {pulls.std(ddof=1):.3f}")
    assert all(r.points_per_cube == 4 for r in results)
    assert abs(pulls.mean()) < 0.4 and 0.7 < pulls.std(ddof=1) < 1.35 and np.abs(pulls).max() < 5


def test_batch_sizes_leave_no_batch_of_one():
    assert batch_sizes(10, 4) == [4, 4, 2] and batch_sizes(9, 4) == [4, 5] and batch_sizes(8, 4) == [4, 4]
    assert batch_sizes(3, 8) == [3]
    with pytest.raises(ValueError, match="at least 2"):
        batch_sizes(1, 8)


def test_tally_of_unequal_groups():
    w = torch.tensor([1.0, 3.0, 2.0, 2.0, 4.0, 0.0, 5.0], dtype=torch.float64)
    t = Tally().add(w, torch.tensor([2, 2, 3]))
    assert t.sum_group_var == pytest.approx(2 * 2.0 + 2 * 0.0 + 3 * w[4:].var().item())
    with pytest.raises(ValueError, match="groups"):
        Tally().add(w, torch.tensor([1, 6]))


def test_stratified_error_matches_the_known_variance():
    """f(u) = u on [0, 1] under the untrained (uniform) sampler: within a cell of width 1/H the
    weights have variance 1/(12 H²), so σ per event = 1/(√12 H), against 1/√12 unstratified."""
    integrator = Integrator(lambda u: u[:, 0], 1, seed=3)
    u, log_q, _, _ = integrator.draw(1000)
    assert float(log_q.abs().max()) < 1e-5  # the untrained sampler is uniform
    plain = integrator.integrate(100_000, batch=10_000, progress=False, exact=0.5, stratify=False)
    strata = integrator.integrate(100_000, batch=10_000, progress=False, exact=0.5, per_cube=2)  # 10 batches
    assert plain.relative_std == pytest.approx(2 / math.sqrt(12), rel=0.02)
    assert strata.relative_std == pytest.approx(2 / (math.sqrt(12) * 5000), rel=0.02)  # 5000 cells of 2 points
    assert strata.calls_estimate == plain.calls_estimate == 100_000
    odd = integrator.integrate(10_001, batch=5_000, progress=False, exact=0.5)  # a probe of 625, then 3 batches
    assert odd.calls_estimate == odd.tally["n"] == 10_001 and abs(odd.pull) < 4
    assert abs(strata.pull) < 4 and abs(plain.pull) < 4


def _ridge(x):
    """A narrow ridge along the diagonal of the unit square: exp(−(x₀ − x₁)²/(2σ²)), σ = 0.05."""
    return torch.exp(-(x[:, 0] - x[:, 1]) ** 2 / (2 * 0.05**2))


RIDGE_EXACT = math.sqrt(2 * math.pi) * 0.05 * math.erf(1 / (math.sqrt(2) * 0.05)) - 2 * 0.05**2 * (1 - math.exp(-1 / (2 * 0.05**2)))


def test_the_pilots_choose_the_sampler_that_suits_the_integrand():
    """On 1 + x₀/10 stratified uniform points leave almost no variance (a trained sampler's
    wiggles leave more); a product of peaks is separable, the VEGAS grid's; a diagonal ridge
    is correlated, which only the flow follows. (On the 2-D peak a flow given many gradient steps
    per batch comes close to the grid, so the peak's flow trains with reuse=4.)"""
    flat = integrate(lambda x: 1 + x[:, 0] / 10, 2, calls=60_000, batch=1024, seed=2, progress=False, exact=1.05)
    peak = integrate(gaussian, 2, calls=60_000, batch=1024, reuse=4, seed=2, progress=False,
                     exact=math.erf(1 / (2 * ALPHA)) ** 2)
    ridge = integrate(_ridge, 2, calls=60_000, batch=1024, seed=2, progress=False, exact=RIDGE_EXACT)
    assert (flat.sampler, peak.sampler, ridge.sampler) == ("uniform", "grid", "flow")
    for result in (flat, peak, ridge):
        assert result.calls_training + result.calls_pilot + result.calls_estimate == 60_000
        assert result.tally["n"] == result.calls_estimate and abs(result.pull) < 4
    assert integrate(gaussian, 2, calls=60_000, batch=1024, seed=2, progress=False, choose=False).calls_pilot == 0


def test_a_float64_sampler_gets_float64_stratified_points():
    flow = NSF(2, bins=4, transforms=2, hidden=(8,), bounded=True).double()
    integrator = Integrator(gaussian, 2, flow=flow, seed=0)
    result = integrator.integrate(4096, progress=False, exact=math.erf(1 / (2 * ALPHA)) ** 2)
    assert abs(result.pull) < 4 and result.tally["n"] == 4096


@pytest.mark.parametrize("per_cube, batches", [(None, 10), (4, 12)])
def test_an_interrupted_estimate_continues_from_its_checkpoint(tmp_path, per_cube, batches):
    """An estimate that dies part-way (here the integrand fails on its 5th batch) continues from its
    checkpoint, with nothing redone, to exactly the result of an uninterrupted one: with equal
    allocation (3 pilots and 7 near-equal batches) and with an adaptive one (3 pilots, a ramp of 3
    batches, then 6: the plan after the pilots is rebuilt from the saved choice)."""
    trained = Integrator(gaussian, 2, seed=4, transforms=2, hidden=(16,))
    trained.adapt_grid(4000, progress=False)
    trained.train(4096, batch=1024, progress=False)
    trained.save(tmp_path / "state.nfapps")
    straight = trained.integrate(30_000, batch=4000, progress=False, per_cube=per_cube)

    calls = {"n": 0, "fail": True}

    def fails_in_batch_5(x):
        calls["n"] += 1
        if calls["n"] == 5 and calls["fail"]:
            raise RuntimeError("node lost")
        return gaussian(x)

    def fresh(f):
        return Integrator(f, 2, seed=4, transforms=2, hidden=(16,), backend="torch").restore(tmp_path / "state.nfapps")

    checkpoint = tmp_path / "estimate.nfapps"
    with pytest.raises(ValueError, match="node lost"):
        fresh(fails_in_batch_5).integrate(30_000, batch=4000, progress=False, checkpoint=checkpoint, per_cube=per_cube)
    assert checkpoint.is_file()
    calls.update(n=0, fail=False)
    resumed = fresh(fails_in_batch_5).integrate(30_000, batch=4000, progress=False, checkpoint=checkpoint,
                                                per_cube=per_cube)
    assert calls["n"] == batches - 4  # the 4 batches before the failure are not redone
    assert resumed.calls_estimate + resumed.calls_pilot == 30_000
    assert resumed.points_per_cube == (per_cube if per_cube else straight.points_per_cube)
    timing = {"time_integrand_s", "time_sampler_s", "time_training_s", "peak_memory_mb"}
    assert {k: v for k, v in resumed.to_dict().items() if k not in timing} == {
        k: v for k, v in straight.to_dict().items() if k not in timing}
    with pytest.raises(ValueError, match="another estimate"):
        fresh(gaussian).integrate(20_000, batch=4000, progress=False, checkpoint=checkpoint, per_cube=per_cube)


def test_the_default_sampler_is_sized_by_dimension():
    """Small d: the wide flow, drawing through the splines' inverses; large d: the narrow one,
    drawing through the splines themselves; every dimension conditions every other."""
    assert sampler_size(2) == {"bins": 16, "transforms": 2, "hidden": (64, 64), "sampling": "inverse"}
    assert sampler_size(3)["transforms"] == sampler_size(4)["transforms"] == 4
    assert sampler_size(8) == {"bins": 8, "transforms": 6, "hidden": (32, 32), "sampling": "forward"}
    assert sampler_size(16) == {"bins": 4, "transforms": 6, "hidden": (32, 32), "sampling": "forward"}
    assert sampler_size(96)["transforms"] == 9
    assert sampler_size(16, bins=4, transforms=8, hidden=[16])["hidden"] == (16,)
    for dim in (3, 9):
        flow = Integrator(lambda x: x[:, 0], dim, device="cpu", grid=0).flow
        kwargs = flow.config["kwargs"]
        assert kwargs["mask"] == "antichain" and kwargs["sampling"] == sampler_size(dim)["sampling"]
        couplings = [t.transform if isinstance(t, Inverse) else t for t in flow.transform.transforms[1:]]
        conditions = torch.zeros(dim, dim, dtype=torch.bool)
        for c in couplings:
            conditions[c.conditioning[:, None], c.transformed[None, :]] = True
        assert (conditions | torch.eye(dim, dtype=torch.bool)).all()
        u, log_q = flow.sample_and_log_prob(64)
        torch.testing.assert_close(flow.log_prob(u), log_q, atol=1e-4, rtol=0)


def test_after_a_tempered_start_the_exponent_rises_no_faster_than_the_ramp():
    """camel-8's first batch is degenerate: β starts below 1 and then rises by at most
    batch/(ramp · schedule) per batch, where without the ramp it may jump to 1 at once;
    gaussian-2's first batch is healthy: β = 1 from the start, ramp or not."""
    f = get_integrand("camel-8")
    steps, schedule, ramp = 24, 512 * 100, 0.1
    rises = {}
    for tempering_ramp in (0.0, ramp):
        integrator = Integrator(f, f.dim, device="cpu", seed=3, grid=0)
        integrator.train(512 * steps, batch=512, reuse=1, progress=False, schedule_calls=schedule,
                         tempering_ramp=tempering_ramp)
        exponents = [r["exponent"] for r in integrator.history]
        assert 0 < exponents[0] < 1 and exponents == sorted(exponents)
        rises[tempering_ramp] = np.diff(exponents).max()
    assert rises[ramp] <= 512 / (ramp * schedule) + 1e-12 < rises[0.0]
    g = get_integrand("gaussian-2")
    integrator = Integrator(g, g.dim, device="cpu", seed=3, grid=0)
    integrator.train(512 * 2, batch=512, reuse=1, progress=False, schedule_calls=schedule, tempering_ramp=ramp)
    assert [r["exponent"] for r in integrator.history] == [1.0, 1.0]
    with pytest.raises(ValueError, match="tempering_ramp must be in"):
        integrator.train(512, tempering_ramp=2.0, progress=False)


def test_a_higher_min_ess_tempers_the_first_batch_more():
    """The tempering threshold: from the same fresh flow and draws, a higher effective-sample-size
    floor gives a smaller exponent β (the first batch of camel-8 is degenerate)."""
    f = get_integrand("camel-8")
    exponents = []
    for min_ess in (0.05, 0.3):
        integrator = Integrator(f, f.dim, device="cpu", seed=3, grid=0)
        integrator.train(512, batch=512, reuse=1, progress=False, min_ess=min_ess)
        exponents.append(integrator.exponent)
    assert 0 < exponents[1] < exponents[0] < 1
    result = integrate(f, f.dim, calls=6000, device="cpu", seed=3, progress=False, min_ess=0.3, grid=0)
    assert math.isfinite(result.value) and result.error > 0
