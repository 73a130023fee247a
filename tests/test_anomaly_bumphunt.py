"""The bump hunt: dijet sideband fit, SR prediction, local significance, sculpting check, plot.

Toys are drawn from a known dijet spectrum by inverse CDF on a fine grid, with a Poisson number of
events, so that the true SR expectation is exact. All seeded; the whole file runs in seconds.
"""

from __future__ import annotations

import itertools
import json
import logging
import math

import numpy as np
import pytest
from scipy import integrate, stats

from nfapps.anomaly import bumphunt
from nfapps.anomaly.bumphunt import (
    BumpHunt,
    SidebandFit,
    bump_hunt,
    dijet_shape,
    fit_sidebands,
    local_significance,
    plot_bump_hunt,
    pyhf_significance,
    sculpting,
)

TRUE = np.array([1.0, 8.0, 5.0, 0.3])  # p0 (rescaled below), p1, p2, p3
MASS_RANGE = (2.6, 5.0)  # TeV, √s = 13 TeV
SR = (3.3, 3.7)
LAMBDA = 20_000  # expected events in the mass range


def _truth():
    grid = np.linspace(*MASS_RANGE, 20_001)
    f = dijet_shape(grid, TRUE)
    cdf = np.r_[0.0, np.cumsum(0.5 * (f[1:] + f[:-1]) * np.diff(grid))]
    total = integrate.quad(lambda m: dijet_shape(m, TRUE), *MASS_RANGE)[0]
    in_sr = integrate.quad(lambda m: dijet_shape(m, TRUE), *SR)[0]
    return grid, cdf / cdf[-1], total, in_sr / total


GRID, CDF, TOTAL, SR_FRACTION = _truth()


def sample(rng: np.random.Generator, expected: float = LAMBDA) -> np.ndarray:
    """A Poisson(expected) number of masses from the true dijet spectrum over MASS_RANGE."""
    return np.interp(rng.random(rng.poisson(expected)), CDF, GRID)


def true_count(low: float, high: float, expected: float = LAMBDA) -> float:
    return expected * integrate.quad(lambda m: dijet_shape(m, TRUE), low, high)[0] / TOTAL


# ---------------------------------------------------------------------------------------------
# The dijet function and the binning
# ---------------------------------------------------------------------------------------------


def test_dijet_shape():
    m = np.array([2.0, 3.5, 6.0])
    x = m / 13.0
    expected = 2.0 * (1 - x) ** 8 / x ** (5 + 0.3 * np.log(x))
    np.testing.assert_allclose(dijet_shape(m, [2.0, 8.0, 5.0, 0.3]), expected, rtol=1e-12)
    np.testing.assert_allclose(dijet_shape(m, [2.0, 8.0, 5.0]), dijet_shape(m, [2.0, 8.0, 5.0, 0.0]), rtol=1e-12)
    np.testing.assert_allclose(dijet_shape(m * 2, [2.0, 8.0, 5.0], sqrt_s=26.0), dijet_shape(m, [2.0, 8.0, 5.0]))
    assert np.isnan(dijet_shape([-1.0, 0.0, 13.0, 14.0], TRUE)).all()
    with pytest.raises(ValueError, match="3 or 4 parameters"):
        dijet_shape(m, [1.0, 2.0])


def test_bins_have_the_sr_boundaries_as_edges():
    m = sample(np.random.default_rng(0), 5000)
    for bins in (7, 40, 100):
        fit = fit_sidebands(m, SR, MASS_RANGE, bins=bins)
        assert SR[0] in fit.edges and SR[1] in fit.edges
        assert fit.edges[0] == MASS_RANGE[0] and fit.edges[-1] == MASS_RANGE[1]
        assert fit.counts.sum() == m.size
        assert fit.ndof == fit.sidebands.sum() - 4
        # observed SR count from the histogram = direct count of [sr0, sr1)
        assert fit.counts[~fit.sidebands].sum() == ((m >= SR[0]) & (m < SR[1])).sum()
    edges = np.linspace(*MASS_RANGE, 25)  # step 0.1: contains 3.3 and 3.7 (up to rounding)
    fit = fit_sidebands(m, SR, MASS_RANGE, bins=edges)
    assert SR[0] in fit.edges and SR[1] in fit.edges
    with pytest.raises(ValueError, match="SR boundary 3.3 is not a bin edge"):
        fit_sidebands(m, SR, MASS_RANGE, bins=np.linspace(*MASS_RANGE, 8))


# ---------------------------------------------------------------------------------------------
# The fit
# ---------------------------------------------------------------------------------------------


def test_fit_recovers_the_truth():
    m = sample(np.random.default_rng(1), 5 * LAMBDA)
    fit = fit_sidebands(m, SR, MASS_RANGE, bins=40)
    assert fit.valid and fit.n_params == 4
    assert fit.p_value > 1e-3, (fit.chi2, fit.ndof)
    # ln f is linear in q = (ln p0, p1, p2, p3): the distance to the truth in q is ~ χ²(4)
    q_true = np.r_[math.log(5 * LAMBDA / TOTAL), TRUE[1:]]
    d = np.r_[math.log(fit.params[0]), fit.params[1:]] - q_true
    assert d @ np.linalg.solve(fit.log_covariance, d) < stats.chi2.ppf(0.999, 4)
    # the covariance in p is the one in q through the Jacobian diag(p0, 1, 1, 1)
    jac = np.diag([fit.params[0], 1, 1, 1])
    np.testing.assert_allclose(fit.covariance, jac @ fit.log_covariance @ jac.T, rtol=1e-10)
    # the fitted spectrum follows the true one (to within a few of its own σ) everywhere
    for low, high in [(2.6, 2.8), (3.3, 3.7), (3.5, 3.6), (4.5, 5.0)]:
        b, err = fit.expected(low, high)
        assert abs(b - true_count(low, high, 5 * LAMBDA)) < 4 * err
    np.testing.assert_allclose(fit.bin_expected().sum(), fit.expected(*MASS_RANGE)[0], rtol=1e-10)
    # three parameters describe this spectrum too
    fit3 = fit_sidebands(m, SR, MASS_RANGE, bins=40, n_params=3)
    assert fit3.valid and fit3.n_params == 3 and fit3.p_value > 1e-3


def test_expected_error_matches_sampled_parameters():
    """The Jacobian propagation of expected() agrees with sampling q from its covariance."""
    fit = fit_sidebands(sample(np.random.default_rng(2)), SR, MASS_RANGE)
    b, err = fit.expected(*SR)
    rng = np.random.default_rng(3)
    q = np.r_[math.log(fit.params[0]), fit.params[1:]]
    draws = rng.multivariate_normal(q, fit.log_covariance, size=400)
    counts = [integrate.quad(dijet_shape, *SR, args=(np.r_[math.exp(d[0]), d[1:]],))[0] for d in draws]
    assert np.std(counts) == pytest.approx(err, rel=0.15)
    assert np.mean(counts) == pytest.approx(b, abs=0.2 * err)


def test_sr_prediction_pulls_are_standard_normal():
    pulls = []
    truth = LAMBDA * SR_FRACTION
    for seed in range(40):  # 400 seeds give mean 0.02, std 1.01
        fit = fit_sidebands(sample(np.random.default_rng(100 + seed)), SR, MASS_RANGE, bins=40)
        assert fit.valid
        b, err = fit.expected(*SR)
        pulls.append((b - truth) / err)
    pulls = np.array(pulls)
    print(f"SR prediction pulls: mean {pulls.mean():.2f}, std {pulls.std(ddof=1):.2f}")
    assert abs(pulls.mean()) < 0.5  # ~3 standard errors
    assert 0.7 < pulls.std(ddof=1) < 1.4


def test_weights_scale_the_prediction():
    m = sample(np.random.default_rng(4), 5000)
    plain = fit_sidebands(m, SR, MASS_RANGE)
    weighted = fit_sidebands(m, SR, MASS_RANGE, weights=np.full(m.size, 2.5))
    assert weighted.scale == pytest.approx(0.4)
    (b, err), (bw, errw) = plain.expected(*SR), weighted.expected(*SR)
    assert bw == pytest.approx(2.5 * b, rel=1e-4) and errw == pytest.approx(2.5 * err, rel=1e-3)
    np.testing.assert_allclose(weighted.params[1:], plain.params[1:], rtol=1e-3, atol=1e-3)


def test_failed_fit_is_flagged_not_raised(caplog):
    # events only at the two ends of the range: no sensible dijet spectrum through them
    m = np.r_[np.linspace(2.6, 2.7, 500), np.linspace(4.9, 5.0, 500)]
    with caplog.at_level(logging.WARNING, logger="nfapps.anomaly.bumphunt"):
        fit = fit_sidebands(m, SR, MASS_RANGE)
    assert not fit.valid
    assert any("not valid" in r.getMessage() for r in caplog.records)
    hunt = bump_hunt(m, np.zeros_like(m), SR, MASS_RANGE)  # no exception: a NaN significance
    assert not hunt.fit.valid and math.isnan(hunt.significance)
    json.dumps(hunt.to_dict(), allow_nan=False)


def test_migrad_failure_is_flagged(monkeypatch, caplog):
    from iminuit import Minuit

    migrad = Minuit.migrad
    monkeypatch.setattr(Minuit, "migrad", lambda self, ncall=None, iterate=5: migrad(self, ncall=2, iterate=1))
    with caplog.at_level(logging.WARNING, logger="nfapps.anomaly.bumphunt"):
        fit = fit_sidebands(sample(np.random.default_rng(5), 5000), SR, MASS_RANGE)
    assert not fit.valid
    assert any("MIGRAD did not converge" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------
# Significance
# ---------------------------------------------------------------------------------------------


def test_local_significance_known_values():
    assert local_significance(10, 10) == 0.0 and local_significance(10, 10, 3) == 0.0
    z = math.sqrt(2 * (15 * math.log(1.5) - 5))
    assert local_significance(15, 10) == pytest.approx(z, rel=1e-12)
    assert local_significance(15, 10, 1e-7) == pytest.approx(z, rel=1e-6)  # σ → 0 is continuous
    assert local_significance(0, 4) == pytest.approx(-math.sqrt(8))  # n = 0: Z² = 2b
    assert local_significance(0, 4, 1.0) < 0 and math.isfinite(local_significance(0, 4, 1.0))
    assert local_significance(5, 10) < 0 < local_significance(15, 10)
    # the background uncertainty lowers |Z|, monotonically
    zs = [local_significance(30, 20, s) for s in (0, 1, 3, 10)]
    assert all(a > b > 0 for a, b in itertools.pairwise(zs))
    # large counts: Z → (n − b)/√(b + σ²)
    assert local_significance(10_300, 10_000, 100) == pytest.approx(300 / math.sqrt(20_000), rel=0.02)
    for bad in [(-1, 10, 0), (5, 0, 0), (5, 10, -1), (float("nan"), 10, 0), (5, 10, float("inf"))]:
        with pytest.raises(ValueError):
            local_significance(*bad)


@pytest.mark.filterwarnings("ignore:jsonschema.RefResolver is deprecated:DeprecationWarning")  # inside pyhf
@pytest.mark.parametrize("n, b, sigma", [(30, 20, 3), (120, 100, 10), (80, 100, 10)])
def test_pyhf_agrees_with_the_formula(n, b, sigma):
    assert pyhf_significance(n, b, sigma) == pytest.approx(local_significance(n, b, sigma), rel=0.05)


def test_background_only_significance_is_standard_normal():
    zs = []
    for seed in range(60):
        rng = np.random.default_rng(200 + seed)
        m = sample(rng)
        hunt = bump_hunt(m, rng.random(m.size), SR, MASS_RANGE, efficiency=0.5)
        assert hunt.fit.valid and hunt.efficiency == pytest.approx(0.5, abs=1e-3)
        zs.append(hunt.significance)
    zs = np.array(zs)
    print(f"background-only Z: mean {zs.mean():.2f}, std {zs.std(ddof=1):.2f}")
    assert abs(zs.mean()) < 0.3
    assert 0.7 < zs.std(ddof=1) < 1.3


def _with_bump(seed: int, n_signal: int = 300):
    rng = np.random.default_rng(seed)
    background = sample(rng)
    signal = rng.normal(3.5, 0.08, n_signal)
    m = np.r_[background, signal]
    scores = np.r_[rng.random(background.size), rng.beta(4, 1, signal.size)]  # signal scores higher
    return m, scores


def test_injected_bump_is_found(tmp_path):
    m, scores = _with_bump(7)
    hunt = bump_hunt(m, scores, SR, MASS_RANGE, efficiency=0.3)
    assert isinstance(hunt, BumpHunt) and isinstance(hunt.fit, SidebandFit)
    assert hunt.fit.valid
    assert hunt.observed > hunt.expected + 3 * math.sqrt(hunt.expected)
    assert hunt.significance > 3, hunt
    assert hunt.significance_stat >= hunt.significance  # the uncertainty only lowers Z
    # the same cut given as a threshold gives the same result
    again = bump_hunt(m, scores, SR, MASS_RANGE, threshold=hunt.threshold)
    assert (again.observed, again.selected) == (hunt.observed, hunt.selected)
    assert again.significance == pytest.approx(hunt.significance)
    record = hunt.to_dict()
    assert json.loads(json.dumps(record, allow_nan=False))["observed"] == hunt.observed
    assert record["fit"]["valid"] is True and len(record["fit"]["counts"]) == len(record["fit"]["edges"]) - 1

    path = tmp_path / "spectrum.png"
    plot_bump_hunt(hunt, path, title="injected bump")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["spectrum.png"]  # no temporary file left


# ---------------------------------------------------------------------------------------------
# Sculpting
# ---------------------------------------------------------------------------------------------


def test_sculpting_flags_a_mass_dependent_cut():
    rng = np.random.default_rng(8)
    m = sample(rng)
    edges = np.linspace(*MASS_RANGE, 21)
    flat = sculpting(m, rng.random(m.size) < 0.2, edges)
    assert flat["p_value"] > 0.01 and flat["ndof"] == 19
    assert flat["overall_efficiency"] == pytest.approx(0.2, abs=0.01)
    sculpted = sculpting(m, rng.random(m.size) < 0.15 + 0.05 * (m - 2.6), edges)  # 15 % → 27 %
    assert sculpted["p_value"] < 1e-3
    json.dumps(sculpted, allow_nan=False)
    eff = np.array(flat["efficiency"], dtype=float)
    lower, upper = np.array(flat["lower"], dtype=float), np.array(flat["upper"], dtype=float)
    assert np.all((lower <= eff) & (eff <= upper))
    assert np.array(flat["total"]).sum() + flat["outside"] == m.size
    # Clopper–Pearson: 0 of 10 passing has the upper bound 1 − (α/2)^(1/10)
    one = sculpting(np.full(10, 3.0), np.zeros(10, bool), [2.0, 4.0])
    assert one["lower"] == [0.0] and one["upper"][0] == pytest.approx(1 - 0.15865 ** 0.1, rel=1e-3)
    empty_bin = sculpting(np.full(10, 3.0), np.ones(10, bool), [2.0, 4.0, 5.0])
    assert empty_bin["efficiency"] == [1.0, None] and empty_bin["p_value"] == 1.0


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------


GOOD = sample(np.random.default_rng(9), 3000)


@pytest.mark.parametrize("call, message", [
    (lambda: fit_sidebands(np.r_[GOOD, np.nan], SR, MASS_RANGE), "not finite"),
    (lambda: fit_sidebands(GOOD, (5.5, 6.0), MASS_RANGE), "must lie strictly inside"),
    (lambda: fit_sidebands(GOOD, (2.0, 3.0), MASS_RANGE), "must lie strictly inside"),
    (lambda: fit_sidebands(GOOD, (3.7, 3.3), MASS_RANGE), "must lie strictly inside"),
    (lambda: fit_sidebands(GOOD, SR, (2.6, 14.0)), "mass_range"),
    (lambda: fit_sidebands([], SR, MASS_RANGE), "empty"),
    (lambda: fit_sidebands(np.r_[GOOD[GOOD < 3.7], np.full(9, 4.0)], SR, MASS_RANGE), "only 9 events in the upper"),
    (lambda: fit_sidebands(GOOD, SR, MASS_RANGE, n_params=5), "n_params"),
    (lambda: fit_sidebands(GOOD, SR, MASS_RANGE, bins=4), "sideband bins"),
    (lambda: fit_sidebands(GOOD, SR, MASS_RANGE, weights=np.ones(3)), "differ in length"),
    (lambda: bump_hunt(GOOD, np.zeros(GOOD.size - 1), SR, MASS_RANGE), "differ in length"),
    (lambda: bump_hunt(GOOD, np.full(GOOD.size, np.nan), SR, MASS_RANGE), "not finite"),
    (lambda: bump_hunt(GOOD, np.zeros(GOOD.size), SR, MASS_RANGE, efficiency=0.5, threshold=0.0), "not both"),
    (lambda: bump_hunt(GOOD, np.random.default_rng(0).random(GOOD.size), SR, MASS_RANGE, efficiency=0.002),
     "sideband"),
    (lambda: sculpting(GOOD, np.ones(GOOD.size - 1, bool), [2.6, 5.0]), "differ in length"),
    (lambda: sculpting([np.nan], [True], [2.6, 5.0]), "not finite"),
    (lambda: SidebandFit(np.ones(2), np.eye(2), np.r_[1.0, 2.0], np.r_[1.0], SR, 0.0, 0, True), "3 or 4"),
])
def test_bad_inputs_raise_one_clear_line(call, message):
    with pytest.raises(ValueError, match=message) as err:
        call()
    assert "\n" not in str(err.value)


def test_module_exports():
    assert set(bumphunt.__all__) >= {"dijet_shape", "SidebandFit", "fit_sidebands", "local_significance",
                                     "pyhf_significance", "BumpHunt", "bump_hunt", "sculpting", "plot_bump_hunt"}
