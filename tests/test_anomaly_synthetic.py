"""Tests of the closed-form synthetic dijet model (nfapps.anomaly.synthetic).

The densities are checked three independent ways: they integrate to one (quadrature / dense
grids), they agree point by point with formulas written here from scipy.stats, and the samplers
reproduce them (KS tests through exact CDFs / probability integral transforms, binned chi²,
importance-sampling identities).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest
from scipy import integrate, special, stats

from nfapps.anomaly.synthetic import (
    COLUMNS,
    DijetModel,
    make_dataset,
    n_signal_for,
    signal_fraction_for,
    write_hdf5,
    write_root,
)

MODEL = DijetModel()
# Jet masses that overlap, so both orderings of the signal pair matter, and different τ21 per jet.
OVERLAP = DijetModel(m_x=0.12, m_y=0.1, jet_mass_resolution_x=0.2, jet_mass_resolution_y=0.2,
                     signal_tau21_mean_x=0.25, signal_tau21_mean_y=0.4, correlation=0.02)
P_MIN = 1e-3  # KS / chi² p-value threshold (seeded, so deterministic)


def _ks(sample, cdf):
    return stats.kstest(sample, cdf).pvalue


def _auc(sig_scores, bkg_scores):
    r = stats.rankdata(np.concatenate([sig_scores, bkg_scores]))
    ns, nb = len(sig_scores), len(bkg_scores)
    return (r[:ns].sum() - ns * (ns + 1) / 2) / (ns * nb)


# ---------------------------------------------------------------- independent reference formulas
def _ref_bkg_features(model, x, m):
    a = x[:, 0] - model.correlation * m
    b = a + x[:, 1]
    med = model.jet_mass_offset + model.jet_mass_slope * m
    ln = lambda v: stats.lognorm.pdf(v, s=model.jet_mass_sigma, scale=med)

    def tau(t, mu):
        mean = model.tau21_min + (model.tau21_max - model.tau21_min) / (1 + mu / model.tau21_mass_scale)
        k = model.tau21_concentration
        return stats.beta.pdf(t, k * mean, k * (1 - mean))

    return 2 * ln(a) * ln(b) * tau(x[:, 2], a) * tau(x[:, 3], b)


def _trunc(model, which):
    mass = model.m_x if which == "x" else model.m_y
    rel = model.jet_mass_resolution_x if which == "x" else model.jet_mass_resolution_y
    s = rel * mass
    return stats.truncnorm(-mass / s, np.inf, loc=mass, scale=s)


def _sig_tau(model, which):
    mean = model.signal_tau21_mean_x if which == "x" else model.signal_tau21_mean_y
    k = model.signal_tau21_concentration
    return stats.beta(k * mean, k * (1 - mean))


def _ref_sig_features(model, x, m):
    a = x[:, 0] - model.correlation * m
    b = a + x[:, 1]
    gx, gy, bx, by = _trunc(model, "x"), _trunc(model, "y"), _sig_tau(model, "x"), _sig_tau(model, "y")
    return (gx.pdf(b) * bx.pdf(x[:, 3]) * gy.pdf(a) * by.pdf(x[:, 2])
            + gx.pdf(a) * bx.pdf(x[:, 2]) * gy.pdf(b) * by.pdf(x[:, 3]))


# ---------------------------------------------------------------- parameters
def test_defaults_serialise_and_hash():
    d = MODEL.to_dict()
    assert d["sqrt_s"] == 13.0 and d["m_wprime"] == 3.5 and d["m_x"] == 0.5 and d["m_y"] == 0.1
    assert DijetModel.from_dict(json.loads(json.dumps(d))) == MODEL
    assert hash(DijetModel.from_dict(d)) == hash(MODEL)
    assert MODEL.mass_range == (2.0, 6.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        MODEL.p1 = 3.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown parameter"):
        DijetModel.from_dict({"p4": 1.0})


@pytest.mark.parametrize("kwargs, match", [
    ({"sqrt_s": -1.0}, "sqrt_s must be > 0"),
    ({"mjj_max": 1.5}, "mjj_max must be > mjj_min"),
    ({"mjj_max": 14.0}, "mjj_max must be < sqrt_s"),
    ({"p3": -0.1}, "p3 must be >= 0"),
    ({"p1": -1.0}, "p1 must be >= 0"),
    ({"turn_on_width": 0.0}, "turn_on_width must be > 0"),
    ({"jet_mass_sigma": 0.0}, "jet_mass_sigma must be > 0"),
    ({"jet_mass_slope": 0.0, "jet_mass_offset": 0.0}, "cannot both be 0"),
    ({"tau21_max": 1.0}, r"tau21_max must be in \(0, 1\)"),
    ({"tau21_min": 0.9}, "tau21_min must be <= tau21_max"),
    ({"m_wprime": 7.0}, "m_wprime must be inside the mass range"),
    ({"tail_fraction": 1.0}, r"tail_fraction must be in \[0, 1\)"),
    ({"mjj_resolution": 0.0}, "mjj_resolution must be > 0"),
    ({"signal_tau21_mean_x": 0.0}, "signal_tau21_mean_x must be in"),
    ({"correlation": -0.1}, "correlation must be >= 0"),
    ({"p2": float("nan")}, "p2 must be a finite real number"),
    ({"m_x": "0.5"}, "m_x must be a finite real number"),
    ({"m_y": True}, "m_y must be a finite real number"),
])
def test_invalid_parameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DijetModel(**kwargs)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        MODEL.log_prob_features_background(np.zeros((3, 3)), np.ones(3))
    with pytest.raises(ValueError, match="does not match"):
        MODEL.log_prob_features_signal(np.zeros((3, 4)), np.ones(2))
    with pytest.raises(ValueError, match="non-negative integer"):
        MODEL.sample_background(-1, 0)
    with pytest.raises(ValueError, match="> 0"):
        MODEL.sample_background_features(np.array([3.0, -1.0]), 0)
    with pytest.raises(ValueError, match="s_over_b"):
        signal_fraction_for(MODEL, -0.1)
    with pytest.raises(ValueError, match="lo < hi"):
        signal_fraction_for(MODEL, 0.1, sr=(3.7, 3.3))


# ---------------------------------------------------------------- m_jj densities
@pytest.mark.parametrize("model", [MODEL, DijetModel(p1=8.0, p2=4.5, p3=0.3, turn_on_width=0.05)])
def test_mass_densities_normalised(model):
    lo, hi = model.mass_range
    pts = [model.turn_on_midpoint, model.m_wprime]
    for logp in (model.log_prob_mass_background, model.log_prob_mass_signal):
        val, _ = integrate.quad(lambda t, logp=logp: float(np.exp(logp(t))), lo, hi, points=pts, limit=500,
                                  epsabs=0, epsrel=1e-12)
        assert val == pytest.approx(1.0, abs=1e-9)
        # dense-grid cross-check (Simpson)
        grid = np.linspace(lo, hi, 40001)
        assert integrate.simpson(np.exp(logp(grid)), x=grid) == pytest.approx(1.0, abs=1e-8)
        out = logp(np.array([lo - 1e-9, hi + 1e-9, 0.0, -1.0, np.nan]))
        assert np.all(out[:4] == -np.inf) and np.isnan(out[4])
        assert np.all(np.isfinite(logp(np.array([lo, hi, 0.5 * (lo + hi)]))))
    # CDFs and SR probabilities agree with quadrature of the densities
    for cdf, prob, logp in ((model.cdf_mass_background, model.mass_probability_background, model.log_prob_mass_background),
                            (model.cdf_mass_signal, model.mass_probability_signal, model.log_prob_mass_signal)):
        assert cdf(lo) == pytest.approx(0.0, abs=1e-15) and cdf(hi) == pytest.approx(1.0, abs=1e-12)
        q, _ = integrate.quad(lambda t, logp=logp: float(np.exp(logp(t))), 3.3, 3.7, epsabs=0, epsrel=1e-12)
        assert prob(3.3, 3.7) == pytest.approx(q, rel=1e-9)
        assert float(cdf(3.7) - cdf(3.3)) == pytest.approx(q, rel=1e-9)


def test_background_mass_formula():
    m = np.array([2.3, 2.65, 3.5, 5.0])
    x = m / 13.0
    shape = (1 - x) ** 10 / x ** 5 / (1 + np.exp(-(m - 2.65) / 0.1))
    logp = MODEL.log_prob_mass_background(m)
    np.testing.assert_allclose(logp - logp[0], np.log(shape) - np.log(shape[0]), rtol=0, atol=1e-12)


def test_mass_samplers_match_densities():
    rng = np.random.default_rng(11)
    m = MODEL.sample_mass_background(200_000, rng)
    assert m.min() >= 2.0 and m.max() <= 6.0
    assert _ks(m, MODEL.cdf_mass_background) > P_MIN
    # binned chi² with exact bin probabilities (quadrature)
    edges = np.concatenate([np.linspace(2.0, 4.0, 33), [4.4, 6.0]])
    expected = len(m) * np.array([MODEL.mass_probability_background(a, b) for a, b in itertools.pairwise(edges)])
    observed = np.histogram(m, edges)[0]
    assert expected.min() > 50
    chi2 = np.sum((observed - expected) ** 2 / expected)
    assert stats.chi2.sf(chi2, len(expected) - 1) > P_MIN
    ms = MODEL.sample_mass_signal(100_000, rng)
    assert _ks(ms, MODEL.cdf_mass_signal) > P_MIN
    # spectra whose log-density in ln x has an interior maximum (p2 < 0) or curvature (p3 > 0):
    # the other branches of the rejection envelope
    for alt in (DijetModel(p2=-3.0), DijetModel(p1=8.0, p2=4.5, p3=0.3, turn_on_width=0.05)):
        lo, hi = alt.mass_range
        assert integrate.quad(lambda t, alt=alt: float(np.exp(alt.log_prob_mass_background(t))), lo, hi, limit=200,
                              points=[2.65, 3.0])[0] == pytest.approx(1.0, abs=1e-9)
        assert _ks(alt.sample_mass_background(100_000, rng), alt.cdf_mass_background) > P_MIN
    # a signal whose tail is cut by the range: truncation handled exactly
    cut = DijetModel(m_wprime=2.1, mjj_resolution=0.08)
    assert _ks(cut.sample_mass_signal(50_000, rng), cut.cdf_mass_signal) > P_MIN


@pytest.mark.parametrize("model", [MODEL, DijetModel(p2=-3.0), DijetModel(p1=4.0, p2=-3.0), DijetModel(p1=8.0, p2=4.5, p3=0.3)])
def test_rejection_envelope_bounds_density(model):
    """White-box: the sampler's piecewise-constant envelope lies above the density in every bin
    (checked on 200 points per bin, the bin ends included)."""
    edges, log_bound, probs = model._envelope
    frac = np.linspace(0.0, 1.0, 200)
    pts = edges[:-1, None] + np.diff(edges)[:, None] * frac[None, :]
    gap = model._log_g(pts) - log_bound[:, None]
    assert gap.max() <= 0 and gap.max() > -1e-3  # a bound, and a tight one
    assert probs.sum() == pytest.approx(1.0)


def test_signal_peak_and_resolution():
    grid = np.linspace(2.0, 6.0, 400_001)
    dens = np.exp(MODEL.log_prob_mass_signal(grid))
    assert abs(grid[np.argmax(dens)] - 3.5) < 0.01
    core = DijetModel(tail_fraction=0.0)
    m = core.sample_mass_signal(100_000, np.random.default_rng(2))
    assert m.mean() == pytest.approx(3.5, abs=0.003)
    assert m.std() == pytest.approx(0.04 * 3.5, rel=0.02)
    # with the tail: fraction within ±σ_core of M matches the exact CDF
    ms = MODEL.sample_mass_signal(100_000, np.random.default_rng(3))
    lo, hi = 3.5 - 0.14, 3.5 + 0.14
    p = float(MODEL.cdf_mass_signal(hi) - MODEL.cdf_mass_signal(lo))
    frac = np.mean((ms > lo) & (ms < hi))
    assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / len(ms))
    assert np.median(ms) < 3.5  # the low tail pulls the median down


# ---------------------------------------------------------------- feature densities
@pytest.mark.parametrize("model", [MODEL, OVERLAP])
def test_feature_densities_match_reference_formulas(model):
    rng = np.random.default_rng(5)
    n = 400
    m = rng.uniform(2.2, 5.5, n)
    x = np.column_stack([model.correlation * m + rng.uniform(0.005, 0.6, n), rng.uniform(0, 0.6, n),
                         rng.uniform(0.001, 0.999, n), rng.uniform(0.001, 0.999, n)])
    lb = model.log_prob_features_background(x, m)
    ls = model.log_prob_features_signal(x, m)
    assert np.all(np.isfinite(lb)) and np.all(np.isfinite(ls))
    np.testing.assert_allclose(lb, np.log(_ref_bkg_features(model, x, m)), rtol=0, atol=1e-9)
    ref_s = _ref_sig_features(model, x, m)
    ok = ref_s > 1e-250  # scipy underflows far in the Gaussian tails; ours stays in log space
    np.testing.assert_allclose(ls[ok], np.log(ref_s[ok]), rtol=1e-9, atol=1e-9)
    # joint = mass × conditional; ratios
    np.testing.assert_allclose(model.log_prob_background(m, x), model.log_prob_mass_background(m) + lb)
    np.testing.assert_allclose(model.log_likelihood_ratio_conditional(x, m), ls - lb)
    lr = model.log_likelihood_ratio(m, x)
    np.testing.assert_allclose(lr, model.log_prob_signal(m, x) - model.log_prob_background(m, x))
    np.testing.assert_allclose(model.likelihood_ratio(m[:50], x[:50]), np.exp(lr[:50]))


def test_feature_support():
    m = np.full(6, 3.5)
    x = np.array([[0.1, 0.1, 0.5, 0.5],
                  [0.0, 0.1, 0.5, 0.5],      # m_J1 = 0
                  [0.1, -1e-12, 0.5, 0.5],   # Δ < 0
                  [0.1, 0.1, 0.0, 0.5],      # τ = 0
                  [0.1, 0.1, 0.5, 1.0],      # τ = 1
                  [0.1, 0.0, 1e-12, 1 - 1e-12]])  # edge of the support, still inside
    for f in (MODEL.log_prob_features_background, MODEL.log_prob_features_signal):
        out = f(x, m)
        assert np.isfinite(out[0]) and np.all(out[1:5] == -np.inf) and np.isfinite(out[5])
        assert np.isnan(f(np.array([[np.nan, 0.1, 0.5, 0.5]]), 3.5)[0])
    assert np.all(np.isnan(MODEL.log_likelihood_ratio_conditional(x[1:5], m[1:5])))
    shifted = DijetModel(correlation=0.1)  # support starts at m_J1 = 0.1 m
    assert shifted.log_prob_features_background(np.array([[0.3, 0.1, 0.5, 0.5]]), 3.5)[0] == -np.inf
    assert np.isfinite(shifted.log_prob_features_background(np.array([[0.36, 0.1, 0.5, 0.5]]), 3.5)[0])


@pytest.mark.parametrize("model", [MODEL, OVERLAP])
def test_conditional_densities_integrate_to_one(model):
    """Factor-wise: the τ21 part integrates to the jet-mass pair density at fixed (m_J1, Δ);
    the pair density integrates to 1 over m_J1 > s m, Δ ≥ 0."""
    m = 3.5
    shift = model.correlation * m
    # (1) τ quadrature: Gauss–Legendre in u with t = u²(3 - 2u), which smooths the Beta end points
    u, wu = np.polynomial.legendre.leggauss(200)
    u, wu = 0.5 * (u + 1), 0.5 * wu
    t, wt = u * u * (3 - 2 * u), wu * 6 * u * (1 - u)
    T1, T2 = (g.ravel() for g in np.meshgrid(t, t, indexing="ij"))
    W = np.outer(wt, wt).ravel()
    for logp, is_bkg in ((model.log_prob_features_background, True), (model.log_prob_features_signal, False)):
        for a, d in ((0.08, 0.03), (0.1, 0.4), (0.11, 0.02)):
            x = np.column_stack([np.full(T1.size, a + shift), np.full(T1.size, d), T1, T2])
            full = np.sum(np.exp(logp(x, m)) * W)
            if is_bkg:
                ref = 2 * stats.lognorm.pdf(a, s=model.jet_mass_sigma, scale=model.jet_mass_slope * m) \
                    * stats.lognorm.pdf(a + d, s=model.jet_mass_sigma, scale=model.jet_mass_slope * m)
            else:
                gx, gy = _trunc(model, "x"), _trunc(model, "y")
                ref = gx.pdf(a + d) * gy.pdf(a) + gx.pdf(a) * gy.pdf(a + d)
            assert full == pytest.approx(ref, rel=1e-10, abs=1e-300)
    # (2) pair densities integrate to 1: dense grid in (a, Δ) with τ integrated out analytically
    #     (the Beta factors are divided out with scipy at τ = 0.5).
    a = np.linspace(1e-5, 1.2, 801)
    d = np.linspace(0.0, 1.6, 1001)
    A, D = np.meshgrid(a, d, indexing="ij")
    x = np.column_stack([A.ravel() + shift, D.ravel(), np.full(A.size, 0.5), np.full(A.size, 0.5)])
    mm = np.full(A.size, m)
    lb = model.log_prob_features_background(x, mm)
    mean = lambda mu: model.tau21_min + (model.tau21_max - model.tau21_min) / (1 + mu / model.tau21_mass_scale)
    k = model.tau21_concentration
    for mu in (A.ravel(), A.ravel() + D.ravel()):
        lb = lb - stats.beta.logpdf(0.5, k * mean(mu), k * (1 - mean(mu)))
    pb = np.exp(lb).reshape(A.shape)
    assert integrate.simpson(integrate.simpson(pb, x=d, axis=1), x=a) == pytest.approx(1.0, abs=1e-5)
    # signal: at τ1 = τ2 = 0.5 both orderings carry the same factor B_X(0.5) B_Y(0.5)
    ls = model.log_prob_features_signal(x, mm) - _sig_tau(model, "x").logpdf(0.5) - _sig_tau(model, "y").logpdf(0.5)
    ps = np.exp(ls).reshape(A.shape)
    assert integrate.simpson(integrate.simpson(ps, x=d, axis=1), x=a) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("model", [MODEL, OVERLAP])
@pytest.mark.parametrize("m0", [3.0, 4.2])
def test_importance_sampling_identities(model, m0):
    r"""Monte Carlo: with q = (p_sig + p_bkg)/2 sampled from both samplers,
    E_q[p_sig/q] = 1 (the weights are bounded by 2, so the error is honest). The plain
    E_{x~p_bkg}[p_sig/p_bkg] = 1 holds too but has infinite variance (τ21 → 0 tails), so it is only
    checked where the signal's τ21 tail is cut off: E_bkg[(p_sig/p_bkg) 1{τ1,τ2 > 0.1}] = P_sig(τ1,τ2 > 0.1)."""
    rng = np.random.default_rng(17)
    n = 100_000
    m = np.full(n, m0)
    xb = model.sample_background_features(m, rng)
    xs = model.sample_signal_features(m, rng)
    x = np.concatenate([xb, xs])
    mm = np.concatenate([m, m])
    lb = model.log_prob_features_background(x, mm)
    ls = model.log_prob_features_signal(x, mm)
    w = np.exp(ls - np.logaddexp(ls, lb) + math.log(2.0))  # p_sig / q, in [0, 2]
    # stratified estimator: half the draws from each component
    est = 0.5 * (w[:n].mean() + w[n:].mean())
    se = 0.5 * math.sqrt(w[:n].var() / n + w[n:].var() / n)
    assert abs(est - 1.0) < 5 * se + 1e-12

    # truncated plain ratio (finite variance) against the exact signal probability
    r = np.exp(model.log_likelihood_ratio_conditional(xb, m)) * ((xb[:, 2] > 0.1) & (xb[:, 3] > 0.1))
    if model is MODEL:  # equal τ for both jets: P = (1 - F(0.1))²
        target = _sig_tau(model, "x").sf(0.1) ** 2
    else:
        target = _sig_tau(model, "x").sf(0.1) * _sig_tau(model, "y").sf(0.1)
    assert abs(r.mean() - target) < 5 * r.std() / math.sqrt(n) + 1e-3


# ---------------------------------------------------------------- feature samplers
def test_background_feature_sampler_exact():
    rng = np.random.default_rng(23)
    m, x = MODEL.sample_background(100_000, rng)
    assert np.all(x[:, 1] >= 0) and np.all((x[:, 2:] > 0) & (x[:, 2:] < 1))
    a, b = x[:, 0], x[:, 0] + x[:, 1]
    F = lambda v: stats.lognorm.cdf(v, s=MODEL.jet_mass_sigma, scale=MODEL.jet_mass_slope * m)
    # probability integral transform: (F(min), F(max)) are the order statistics of two uniforms
    assert _ks(F(a), lambda u: 1 - (1 - u) ** 2) > P_MIN
    assert _ks(F(b), lambda u: u ** 2) > P_MIN
    k = MODEL.tau21_concentration
    for t, mu in ((x[:, 2], a), (x[:, 3], b)):
        mean = MODEL.tau21_mean_background(mu)
        assert _ks(special.betainc(k * mean, k * (1 - mean), t), "uniform") > P_MIN
    # 2-D check of the ordered pair at fixed m: P(min ∈ I, max ∈ J) = 2 ΔF_I ΔF_J (I < J), ΔF_I² (I = J)
    m0 = 3.5
    xs = MODEL.sample_background_features(np.full(100_000, m0), rng)
    edges = np.array([0.0, 0.04, 0.06, 0.08, 0.1, 0.13, 0.17, 0.25, np.inf])
    cdf = stats.lognorm.cdf(edges, s=MODEL.jet_mass_sigma, scale=MODEL.jet_mass_slope * m0)
    dF = np.diff(cdf)
    expected = np.triu(2 * np.outer(dF, dF), 1) + np.diag(dF ** 2)
    hist = np.histogram2d(xs[:, 0], xs[:, 0] + xs[:, 1], [edges, edges])[0]
    assert np.all(np.tril(hist, -1) == 0)
    iu = np.triu_indices(len(dF))
    e, o = len(xs) * expected[iu], hist[iu]
    assert e.min() > 20
    chi2 = np.sum((o - e) ** 2 / e)
    assert stats.chi2.sf(chi2, len(e) - 1) > P_MIN


@pytest.mark.parametrize("model", [MODEL, OVERLAP])
def test_signal_feature_sampler_exact(model):
    rng = np.random.default_rng(29)
    m, x = model.sample_signal(100_000, rng)
    assert np.all(x[:, 1] >= 0)
    a = x[:, 0] - model.correlation * m
    b = a + x[:, 1]
    gx, gy = _trunc(model, "x"), _trunc(model, "y")
    assert _ks(a, lambda v: 1 - gx.sf(v) * gy.sf(v)) > P_MIN  # min of independent X, Y
    assert _ks(b, lambda v: gx.cdf(v) * gy.cdf(v)) > P_MIN    # max
    if model.signal_tau21_mean_x == model.signal_tau21_mean_y:
        for j in (2, 3):
            assert _ks(x[:, j], _sig_tau(model, "x").cdf) > P_MIN
    else:
        # τ21 travels with its jet: the lighter jet's τ is a mixture over which jet is lighter
        p_y_light = integrate.quad(lambda v: gy.pdf(v) * gx.sf(v), 0, 2, points=[0.1, 0.12])[0]
        bx, by = _sig_tau(model, "x"), _sig_tau(model, "y")
        assert _ks(x[:, 2], lambda t: p_y_light * by.cdf(t) + (1 - p_y_light) * bx.cdf(t)) > P_MIN
        assert _ks(x[:, 3], lambda t: p_y_light * bx.cdf(t) + (1 - p_y_light) * by.cdf(t)) > P_MIN


def test_correlated_variant_shifts_jet_masses():
    s = 0.1
    corr = dataclasses.replace(MODEL, correlation=s)
    m0, x0 = MODEL.sample_background(20_000, 7)
    m1, x1 = corr.sample_background(20_000, 7)
    np.testing.assert_array_equal(m0, m1)
    np.testing.assert_allclose(x1[:, 0], x0[:, 0] + s * m0, rtol=1e-14)
    np.testing.assert_allclose(x1[:, 1:], x0[:, 1:], rtol=1e-12, atol=1e-15)
    shift = np.zeros_like(x0)
    shift[:, 0] = s * m0
    np.testing.assert_allclose(corr.log_prob_features_background(x0 + shift, m0),
                               MODEL.log_prob_features_background(x0, m0), rtol=1e-10)
    ms, xs = MODEL.sample_signal(5_000, 8)
    shift_s = np.zeros_like(xs)
    shift_s[:, 0] = s * ms
    np.testing.assert_allclose(corr.log_prob_features_signal(xs + shift_s, ms),
                               MODEL.log_prob_features_signal(xs, ms), rtol=1e-10)
    _, xs1 = corr.sample_signal(5_000, 8)
    np.testing.assert_allclose(xs1[:, 0], xs[:, 0] + s * ms, rtol=1e-14)
    # the slope of m_J1 against m_jj grows by exactly s
    slope0 = np.polyfit(m0, x0[:, 0], 1)[0]
    slope1 = np.polyfit(m1, x1[:, 0], 1)[0]
    assert slope1 - slope0 == pytest.approx(s, abs=1e-9)


def test_likelihood_ratio_separates():
    rng = np.random.default_rng(31)
    mb, xb = MODEL.sample_background(20_000, rng)
    ms, xs = MODEL.sample_signal(20_000, rng)
    auc = _auc(MODEL.log_likelihood_ratio(ms, xs), MODEL.log_likelihood_ratio(mb, xb))
    assert auc > 0.95
    # conditional at the signal's m_jj: the idealized anomaly detector's target
    auc_c = _auc(MODEL.log_likelihood_ratio_conditional(xs, ms), MODEL.log_likelihood_ratio_conditional(xb, mb))
    assert auc_c > 0.95
    assert np.all(np.isfinite(MODEL.log_likelihood_ratio(mb, xb)))
    assert np.median(MODEL.likelihood_ratio(ms, xs)) > np.median(MODEL.likelihood_ratio(mb, xb))


# ---------------------------------------------------------------- S/B helper and data sets
def test_signal_injection_helper():
    pb = MODEL.mass_probability_background(3.3, 3.7)
    ps = MODEL.mass_probability_signal(3.3, 3.7)
    assert 0.05 < pb < 0.2 and 0.6 < ps < 0.9
    assert signal_fraction_for(MODEL, 0.02) == pytest.approx(0.02 * pb / ps, rel=1e-12)
    n_b = 200_000
    n_s = n_signal_for(MODEL, 0.05, n_b)
    assert n_s == round(0.05 * pb / ps * n_b)
    data = make_dataset(MODEL, n_b, n_s, seed=3)
    sr = (data["mjj"] > 3.3) & (data["mjj"] < 3.7)
    b = np.sum(sr & (data["label"] == 0))
    s = np.sum(sr & (data["label"] == 1))
    assert abs(b / n_b - pb) < 5 * math.sqrt(pb * (1 - pb) / n_b)
    assert abs(s / n_s - ps) < 5 * math.sqrt(ps * (1 - ps) / n_s)
    assert s / b == pytest.approx(0.05, rel=0.15)


def test_make_dataset():
    data = make_dataset(MODEL, 3_000, 500, seed=1)
    assert tuple(data) == COLUMNS
    for col in data.values():
        assert col.dtype == np.float64 and col.shape == (3_500,)
    assert data["label"].sum() == 500
    assert not np.all(np.diff(data["label"]) >= 0)  # shuffled
    again = make_dataset(MODEL, 3_000, 500, seed=1)
    for k in COLUMNS:
        np.testing.assert_array_equal(data[k], again[k])
    assert np.all(data["delta_mj"] >= 0)


def _no_temp_files(directory):
    return not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_write_hdf5_round_trip(tmp_path):
    h5py = pytest.importorskip("h5py")
    data = make_dataset(MODEL, 1_000, 100, seed=2)
    path = tmp_path / "events.h5"
    assert write_hdf5(path, data, MODEL) == path
    with h5py.File(path, "r") as f:
        for k in COLUMNS:
            assert f[k].dtype == np.float64 and f[k].ndim == 1
            np.testing.assert_array_equal(f[k][()], data[k])
        assert DijetModel.from_dict(json.loads(f.attrs["model"])) == MODEL
        assert json.loads(f.attrs["columns"]) == list(COLUMNS)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="already exists.*overwrite=True"):
        write_hdf5(path, data, MODEL)
    assert path.read_bytes() == before
    small = {k: v[:10] for k, v in data.items()}
    write_hdf5(path, small, overwrite=True)
    with h5py.File(path, "r") as f:
        assert len(f["mjj"]) == 10 and "model" not in f.attrs
    assert _no_temp_files(tmp_path)
    with pytest.raises(ValueError, match="entries"):
        write_hdf5(tmp_path / "bad.h5", {"a": np.zeros(3), "b": np.zeros(4)})
    with pytest.raises(ValueError, match="does not exist"):
        write_hdf5(tmp_path / "missing" / "x.h5", small)
    assert not (tmp_path / "bad.h5").exists() and _no_temp_files(tmp_path)


def test_write_root_round_trip(tmp_path):
    uproot = pytest.importorskip("uproot")
    data = make_dataset(MODEL, 1_000, 100, seed=4)
    path = tmp_path / "events.root"
    write_root(path, data, model=MODEL)
    with uproot.open(path) as f:
        tree = f["events"]
        assert set(tree.keys()) == set(COLUMNS)
        arrays = tree.arrays(library="np")
        for k in COLUMNS:
            np.testing.assert_array_equal(arrays[k], data[k])
        assert DijetModel.from_dict(json.loads(str(f["model"]))) == MODEL
    with pytest.raises(ValueError, match="already exists"):
        write_root(path, data, tree="other")
    write_root(path, data, tree="other", overwrite=True)
    with uproot.open(path) as f:
        assert "other" in f
        assert f["other"].num_entries == 1_100
    assert _no_temp_files(tmp_path)
    with pytest.raises(ValueError, match="invalid tree name"):
        write_root(tmp_path / "b.root", data, tree="a/b")
