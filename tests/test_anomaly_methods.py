"""Preprocessing, metrics, classifiers, the conditional density and the methods of the anomaly search."""

from __future__ import annotations

import numpy as np
import pytest

from nfapps.anomaly.classifier import ClassifierSettings, cross_fit, train_classifier
from nfapps.anomaly.density import ConditionalDensity, DensityFolds, DensitySettings, fit_background
from nfapps.anomaly.bumphunt import sculpting
from nfapps.anomaly.methods import anode, cathode, cwola, idealized, lacathode, sample_sr_masses, two_sample_auc
from nfapps.anomaly.metrics import auc, max_sic, roc
from nfapps.anomaly.preprocess import LogitScaler, MassTrend, Standardizer

FAST_CLASSIFIER = ClassifierSettings(epochs=6, top_epochs=2, hidden=(32, 32))
FAST_TREES = ClassifierSettings(model="trees", trees=3, max_iter=100)
FAST_DENSITY = DensitySettings(epochs=15, transforms=3, hidden=(32, 32), patience=5)


def toy_events(n_background: int, n_signal: int, seed: int):
    """Background: x depends smoothly on m ∈ [3, 4]; signal: a narrow peak at m = 3.5 with distinct x."""
    rng = np.random.default_rng(seed)
    m_b = rng.uniform(3.0, 4.0, n_background)
    x_b = np.c_[rng.normal(0.3 * m_b, 0.5), rng.normal(0, 0.5, n_background), rng.beta(5, 3, n_background)]
    m_s = rng.normal(3.5, 0.02, n_signal)
    x_s = np.c_[rng.normal(1.8, 0.1, n_signal), rng.normal(1.0, 0.1, n_signal), rng.beta(2, 8, n_signal)]
    labels = np.r_[np.zeros(n_background), np.ones(n_signal)]
    return np.r_[x_b, x_s], np.r_[m_b, m_s], labels


# -- preprocessing ---------------------------------------------------------------------------------


def test_logit_scaler_round_trip_and_finite_far_outside():
    rng = np.random.default_rng(0)
    x = np.c_[rng.beta(2, 5, 1000), rng.lognormal(0, 1, 1000)]
    scaler = LogitScaler.fit(x)
    y = scaler.transform(x)
    assert np.allclose(scaler.inverse(y), x, rtol=1e-9, atol=1e-12)
    assert np.allclose(y.mean(axis=0), 0, atol=1e-9) and np.allclose(y.std(axis=0), 1, atol=1e-9)
    far = scaler.transform(np.array([[-1e6, 1e9], [x[:, 0].max(), x[:, 1].min()]]))
    assert np.isfinite(far).all()


def test_logit_scaler_log_det_matches_the_finite_difference_jacobian():
    rng = np.random.default_rng(8)
    x = np.c_[rng.normal(2, 0.5, 500), rng.beta(2, 5, 500)]
    scaler = LogitScaler.fit(x)
    h = 1e-6
    columns = [(scaler.transform(x + h * e) - scaler.transform(x - h * e)) / (2 * h) for e in np.eye(2)]
    jacobian = np.stack(columns, axis=2)  # (events, ∂y_i, ∂x_j)
    assert np.allclose(scaler.log_abs_det(x), np.log(np.abs(np.linalg.det(jacobian))), atol=1e-6)


def test_preprocessing_rejects_bad_input():
    with pytest.raises(ValueError, match="non-finite value nan at event 1, feature 0"):
        LogitScaler.fit(np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 3.0]]))
    with pytest.raises(ValueError, match="constant"):
        LogitScaler.fit(np.array([[0.0, 1.0], [0.0, 2.0]]))
    with pytest.raises(ValueError, match="expected 2 features, got 3"):
        LogitScaler.fit(np.random.default_rng(0).normal(size=(10, 2))).transform(np.zeros((2, 3)))
    s = Standardizer.fit(np.arange(10.0))
    assert np.allclose(s.inverse(s.transform(np.arange(10.0))), np.arange(10.0))


def test_mass_trend_takes_out_a_polynomial_drift_and_is_undone_exactly():
    rng = np.random.default_rng(12)
    m = rng.uniform(2.8, 4.5, 20_000)
    y = np.c_[0.5 * m + rng.normal(0, 1, len(m)), -((m - 3.5) ** 2) + rng.normal(0, 1, len(m))]
    trend = MassTrend.fit(y, m, degree=2)
    flat = trend.remove(y, m)
    for column in flat.T:  # no drift left: uncorrelated with m and m²
        assert abs(np.corrcoef(column, m)[0, 1]) < 0.02 and abs(np.corrcoef(column, (m - 3.5) ** 2)[0, 1]) < 0.02
    assert np.allclose(trend.restore(flat, m), y, atol=1e-12)
    again = MassTrend.from_state(trend.state())
    assert np.array_equal(again.remove(y, m), flat)
    assert np.array_equal(MassTrend.fit(y, m, degree=0).remove(y, m), y)  # degree 0: the identity
    with pytest.raises(ValueError, match="integer ≥ 0"):
        MassTrend.fit(y, m, degree=-1)
    with pytest.raises(ValueError, match="scale trend degree must be an integer ≥ 0"):
        MassTrend.fit(y, m, degree=1, scale_degree=1.5)


def test_mass_trend_of_the_width_standardises_at_every_mass_and_states_its_log_det():
    rng = np.random.default_rng(13)
    m = rng.uniform(2.8, 4.5, 40_000)
    width = np.exp(0.4 * (m - 3.5))  # the spread grows with m, as the jet masses' does
    y = np.c_[0.5 * m + width * rng.normal(0, 1, len(m)), rng.normal(0, 2, len(m))]
    trend = MassTrend.fit(y, m, degree=1, scale_degree=1)
    flat = trend.remove(y, m)
    for low in (2.8, 3.6, 4.2):
        inside = (m >= low) & (m < low + 0.3)
        assert np.abs(flat[inside].std(axis=0) - 1).max() < 0.03 and np.abs(flat[inside].mean(axis=0)).max() < 0.03
    assert np.allclose(trend.restore(flat, m), y, atol=1e-12)
    assert np.array_equal(MassTrend.from_state(trend.state()).remove(y, m), flat)
    # log|det ∂remove/∂y| at fixed m, against the Jacobian by central differences (the map is affine in y)
    for mass in (2.9, 4.4):
        at, step = np.array([mass]), 1e-4
        jacobian = np.stack([(trend.remove(y[:1] + step * e, at) - trend.remove(y[:1] - step * e, at))[0] / (2 * step)
                             for e in np.eye(2)], axis=1)
        assert trend.log_abs_det(at)[0] == pytest.approx(np.log(abs(np.linalg.det(jacobian))), abs=1e-8)
    assert trend.log_abs_det(np.array([4.4]))[0] == pytest.approx(-0.4 * 0.9 - np.log(2), abs=0.03)


def test_density_with_a_width_trend_is_normalised_at_every_mass():
    """E_q[p(y|m)/q(y)] = 1 for any proposal q: checks that log_prob carries the trend's log|det|."""
    rng = np.random.default_rng(14)
    m = rng.uniform(3.0, 4.0, 4000)
    x = np.c_[rng.normal(0.3 * m, 0.2 * np.exp(1.5 * (m - 3.5))), rng.normal(0, 0.5, len(m))]
    settings = DensitySettings(epochs=2, transforms=2, hidden=(16, 16), trend_degree=1, scale_degree=1)
    density = ConditionalDensity.fit(x, m, settings, "cpu", progress=False)
    assert np.abs(density.trend.log_abs_det(np.array([3.0, 4.0]))).min() > 0.3  # far from a pure shift
    y = rng.normal(0, 2.5, (200_000, 2))  # proposal q = N(0, 2.5² I) over the preprocessed features
    log_q = (-0.5 * (y / 2.5) ** 2 - np.log(2.5 * np.sqrt(2 * np.pi))).sum(axis=1)
    x_of_y = density.scaler.inverse(y)
    for mass in (3.0, 4.0):
        weights = np.exp(density.log_prob(x_of_y, np.full(len(y), mass)) - log_q)
        assert weights.mean() == pytest.approx(1, abs=4 * weights.std() / np.sqrt(len(y)) + 0.01)


# -- metrics ---------------------------------------------------------------------------------------


def test_auc_and_sic_against_direct_counts():
    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(2000), np.ones(500)]
    scores = np.r_[rng.normal(0, 1, 2000), rng.normal(1, 1, 500)]
    s, b = scores[labels == 1], scores[labels == 0]
    direct = (s[:, None] > b[None, :]).mean()
    assert auc(scores, labels) == pytest.approx(direct, abs=1e-12)
    curve = roc(scores, labels, min_background=25)
    assert curve.background_passing.min() >= 25
    t = curve.thresholds[-1]
    assert curve.signal_efficiency[-1] == pytest.approx((s >= t).mean())
    assert curve.background_efficiency[-1] == pytest.approx((b >= t).mean())
    assert max_sic(scores, labels) == pytest.approx(np.max(curve.signal_efficiency / np.sqrt(curve.background_efficiency)))
    random = max_sic(rng.normal(size=2500), labels)
    assert random < 2.5  # no information: SIC stays near 1 (noisy only through the 25-event floor)
    with pytest.raises(ValueError, match="both signal"):
        auc(scores, np.zeros(2500))
    with pytest.raises(ValueError, match="fewer than 25 background"):
        roc(scores[-520:], labels[-520:])


# -- classifiers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [FAST_CLASSIFIER, FAST_TREES], ids=["nn", "trees"])
def test_classifier_learns_and_cross_fit_scores_out_of_fold(settings):
    rng = np.random.default_rng(2)
    a, b = rng.normal(0.8, 1, (1500, 2)), rng.normal(0, 1, (1500, 2))
    model = train_classifier(np.r_[a, b], np.r_[np.ones(1500), np.zeros(1500)], settings, "cpu")
    kept, expected = (model.states, settings.top_epochs) if settings.model == "nn" else (model.members, settings.trees)
    assert len(kept) == expected
    test_a, test_b = rng.normal(0.8, 1, (2000, 2)), rng.normal(0, 1, (2000, 2))
    score = auc(model.predict(np.r_[test_a, test_b]), np.r_[np.ones(2000), np.zeros(2000)])
    assert 0.68 < score < 0.80  # Bayes AUC for a shift of 0.8√2 σ is Φ(0.8) = 0.79
    fitted = cross_fit(a, b, folds=3, settings=settings, device="cpu", progress=False)
    assert fitted.out_of_fold.shape == (1500,) and len(fitted.members) == 3
    # a memorising classifier would score its own training events near 1; out of fold they look like fresh ones
    assert abs(fitted.out_of_fold.mean() - fitted.predict(test_a).mean()) < 0.03


def test_two_sample_auc_is_half_for_equal_samples_and_high_for_different():
    rng = np.random.default_rng(3)
    same = two_sample_auc(rng.normal(size=(2000, 2)), rng.normal(size=(2000, 2)), FAST_CLASSIFIER, "cpu")
    assert abs(same - 0.5) < 0.04
    assert two_sample_auc(rng.normal(size=(2000, 2)), rng.normal(0.7, 1, (2000, 2)), FAST_CLASSIFIER, "cpu") > 0.65


# -- density and methods ---------------------------------------------------------------------------


@pytest.mark.parametrize("trend_degree", [0, 1])
def test_conditional_density_learns_the_mass_dependence_and_round_trips(tmp_path, trend_degree):
    x, m, labels = toy_events(6000, 0, seed=4)
    settings = DensitySettings(**{**FAST_DENSITY.__dict__, "trend_degree": trend_degree})
    density = ConditionalDensity.fit(x, m, settings, "cpu", progress=False)
    m_test = np.full(4000, 3.9)
    samples = density.sample(m_test, seed=1)
    assert samples.shape == (4000, 3) and np.isfinite(samples).all()
    assert samples[:, 0].mean() == pytest.approx(0.3 * 3.9, abs=0.08)  # the mean of x₀ follows 0.3 m
    assert samples[:, 2].min() > -0.1 and samples[:, 2].max() < 1.1  # the Beta feature stays near [0, 1]
    density.save(tmp_path / "bg.nfapps")
    again = ConditionalDensity.load(tmp_path / "bg.nfapps")
    assert np.array_equal(again.log_prob(x[:100], m[:100]), density.log_prob(x[:100], m[:100]))


def test_a_density_saved_before_the_mass_trend_loads_as_one_without_it(tmp_path):
    from nfapps.atomic import dump, load_container

    x, m, _ = toy_events(2000, 0, seed=4)
    density = ConditionalDensity.fit(x, m, DensitySettings(epochs=1, transforms=2, hidden=(8, 8), trend_degree=0), "cpu",
                                     progress=False)
    density.save(tmp_path / "new.nfapps")
    payload = load_container(tmp_path / "new.nfapps", "density")
    del payload["trend"], payload["settings"]["trend_degree"], payload["settings"]["ensemble"]  # the layout before the
    payload["flow"] = payload.pop("flows")[0]  # trend and the ensembles existed
    dump(payload, tmp_path / "old.nfapps", "density")
    old = ConditionalDensity.load(tmp_path / "old.nfapps")
    assert old.settings.trend_degree == 0 and old.settings.scale_degree == 0
    assert np.array_equal(old.trend.coefficients, np.zeros((1, 3))) and old.trend.log_scale is None
    assert np.array_equal(old.log_prob(x[:50], m[:50]), density.log_prob(x[:50], m[:50]))


def test_a_flow_ensemble_is_the_equal_mixture_of_its_members(tmp_path):
    x, m, labels = toy_events(3000, 0, seed=4)
    settings = DensitySettings(epochs=2, transforms=2, hidden=(16, 16), ensemble=2)
    trained = ConditionalDensity.fit(x, m, settings, "cpu", checkpoint=tmp_path / "bg.ckpt", progress=False)
    assert (tmp_path / "bg.ckpt").is_file() and (tmp_path / "bg-1.ckpt").is_file()  # each member resumes on its own
    assert not np.allclose(trained.member(0).log_prob(x[:50], m[:50]), trained.member(1).log_prob(x[:50], m[:50]))
    # members that differ a lot: the second learnt x₀ shifted by +0.8 (same preprocessing)
    shifted = ConditionalDensity.fit(x + [0.8, 0, 0], m, DensitySettings(epochs=4, transforms=2, hidden=(16, 16)), "cpu",
                                     progress=False, scaler=trained.scaler, trend=trained.trend)
    mixture = ConditionalDensity(trained.scaler, trained.mass_scaler, [trained.flows[0], shifted.flows[0]], settings,
                                 trained.trend)
    mass = np.full(40_000, 3.5)
    draws = mixture.sample(mass, seed=3)
    log_p = mixture.log_prob(draws, mass)
    members = [mixture.member(e).log_prob(draws, mass) for e in range(2)]
    assert np.allclose(log_p, np.logaddexp(*members) - np.log(2))
    for e in range(2):  # x ~ (p₀ + p₁)/2 ⇒ E[p_e / p] = 1 for each member
        weights = np.exp(members[e] - log_p)
        assert weights.mean() == pytest.approx(1, abs=4 * weights.std() / np.sqrt(len(weights)))
    alone = mixture.member(0).sample(mass, seed=3)  # draws of one member fail that check
    weights = np.exp(mixture.member(0).log_prob(alone, mass) - mixture.log_prob(alone, mass))
    assert weights.mean() - 1 > 10 * weights.std() / np.sqrt(len(weights))
    with pytest.raises(ValueError, match="no single latent space"):
        mixture.latent(x[:10], m[:10])
    assert mixture.member(1).latent(x[:10], m[:10]).shape == (10, 3)
    with pytest.raises(ValueError, match="LaCATHODE needs one flow per background density"):
        lacathode(x[:2000], m[:2000], x[2000:], m[2000:], mixture, classifier=FAST_TREES, progress=False)
    mixture.save(tmp_path / "mixture.nfapps")
    again = ConditionalDensity.load(tmp_path / "mixture.nfapps")
    assert again.settings.ensemble == 2 and np.array_equal(again.log_prob(x[:50], m[:50]), mixture.log_prob(x[:50], m[:50]))
    with pytest.raises(ValueError, match="the flow ensemble must be an integer ≥ 1"):
        DensitySettings(ensemble=0)


@pytest.mark.parametrize("trend_degree, scale_degree", [(0, 0), (2, 0), (1, 1)])
def test_latent_of_the_flows_own_samples_is_standard_normal_at_every_mass(trend_degree, scale_degree):
    x, m, _ = toy_events(3000, 0, seed=4)
    settings = DensitySettings(epochs=2, transforms=2, hidden=(16, 16), trend_degree=trend_degree, scale_degree=scale_degree)
    density = ConditionalDensity.fit(x, m, settings, "cpu", progress=False)
    for mass in (3.1, 3.9):  # whatever the training did: x ~ p(x | m) maps to z ~ N(0, I) exactly
        z = density.latent(density.sample(np.full(20_000, mass), seed=2), np.full(20_000, mass))
        assert z.shape == (20_000, 3) and np.isfinite(z).all()
        assert np.abs(z.mean(axis=0)).max() < 0.04 and np.abs(z.std(axis=0) - 1).max() < 0.03
        assert np.abs(np.corrcoef(z.T) - np.eye(3)).max() < 0.04


def test_sr_masses_follow_the_data_inside_the_window():
    m = np.random.default_rng(5).uniform(3.3, 3.7, 3000)
    draw = sample_sr_masses(m, 5000, (3.3, 3.7), seed=0)
    assert draw.shape == (5000,) and draw.min() > 3.3 and draw.max() < 3.7
    assert abs(draw.mean() - 3.5) < 0.01


def test_sr_masses_are_not_depleted_at_the_edges_of_a_falling_spectrum():
    rng = np.random.default_rng(6)
    m = 3.3 + rng.exponential(0.3, 60_000)
    m = m[m < 3.7][:20_000]  # falling across the window, as m_jj does
    draw = sample_sr_masses(m, 80_000, (3.3, 3.7), seed=1)
    for low, high in ((3.3, 3.31), (3.69, 3.7), (3.45, 3.55)):  # within a bandwidth (≈ 0.02) of each edge, and inside
        expected, got = np.mean((m > low) & (m < high)), np.mean((draw > low) & (draw < high))
        assert got == pytest.approx(expected, rel=0.1), (low, high)  # cut-off draws instead of reflected: ≈ 0.6 ×


def test_density_folds_train_each_density_without_its_fold_and_score_every_sideband_event_out_of_sample(tmp_path):
    x, m, labels = toy_events(12000, 250, seed=6)
    sr = (3.4, 3.6)
    in_sr = (m > sr[0]) & (m < sr[1])
    sb = ~in_sr
    settings = DensitySettings(epochs=4, transforms=2, hidden=(16, 16))
    folds = fit_background(x[sb], m[sb], settings, 2, "cpu", checkpoint=tmp_path / "ckpt", progress=False)
    assert isinstance(folds, DensityFolds) and len(folds) == 2 and abs(np.sum(folds.fold == 0) - np.sum(folds.fold == 1)) <= 1
    for k, density in enumerate(folds.densities):  # its preprocessing was fitted on the events outside fold k
        assert np.array_equal(density.scaler.low, LogitScaler.fit(x[sb][folds.fold != k]).low)
        assert (tmp_path / "ckpt" / f"fold{k}.ckpt").is_file()
    scores = cathode(x[sb], m[sb], x[in_sr], m[in_sr], sr, folds, classifier=FAST_TREES, folds=3, device="cpu",
                     progress=False)
    assert scores.sb.shape == (sb.sum(),) and scores.diagnostics["density_folds"] == 2
    assert auc(scores.sr, labels[in_sr]) > 0.85
    every = scores.of_events(x, m, in_sr)
    assert np.array_equal(every[in_sr], scores.sr) and np.array_equal(every[sb], scores.sb)
    with pytest.raises(ValueError, match="the densities were trained on"):
        scores.of_events(x, m, in_sr, in_sb=sb & (m < 3.9))
    latent = lacathode(x[sb], m[sb], x[in_sr], m[in_sr], folds, classifier=FAST_TREES, folds=3, device="cpu", progress=False)
    assert latent.sb.shape == (sb.sum(),) and auc(latent.sr, labels[in_sr]) > 0.7
    folds.save(tmp_path / "folds.nfapps")
    again = DensityFolds.load(tmp_path / "folds.nfapps")
    assert np.array_equal(again.fold, folds.fold)
    assert np.array_equal(again.densities[1].log_prob(x[:50], m[:50]), folds.densities[1].log_prob(x[:50], m[:50]))
    first = folds.member(0)  # one flow per density already: the same densities on the same folds
    assert np.array_equal(first.fold, folds.fold)
    assert np.array_equal(first.densities[1].log_prob(x[:50], m[:50]), folds.densities[1].log_prob(x[:50], m[:50]))
    with pytest.raises(ValueError, match="flow folds must be an integer ≥ 2"):
        DensityFolds.fit(x[sb], m[sb], settings, 1, "cpu", progress=False)
    one = fit_background(x[sb][:2000], m[sb][:2000], DensitySettings(epochs=1, transforms=1, hidden=(8,)), 1, "cpu",
                         progress=False)
    assert isinstance(one, ConditionalDensity)
    with pytest.raises(ValueError, match="trained on .* sideband events, got"):
        cathode(x[sb][:100], m[sb][:100], x[in_sr], m[in_sr], sr, folds, classifier=FAST_TREES, progress=False)


def test_methods_find_an_injected_signal_well_above_chance():
    x, m, labels = toy_events(12000, 250, seed=6)
    sr = (3.4, 3.6)
    in_sr = (m > sr[0]) & (m < sr[1])
    sb = ~in_sr
    s_cathode = cathode(x[sb], m[sb], x[in_sr], m[in_sr], sr, settings=FAST_DENSITY, classifier=FAST_CLASSIFIER, folds=3,
                        device="cpu", progress=False)
    s_cwola = cwola(x[sb], x[in_sr], FAST_CLASSIFIER, folds=3, device="cpu", progress=False)
    x_truth, m_truth, _ = toy_events(6000, 0, seed=7)
    inside = (m_truth > sr[0]) & (m_truth < sr[1])
    s_ideal = idealized(x[in_sr], x_truth[inside], FAST_CLASSIFIER, folds=3, device="cpu", progress=False)
    s_anode = anode(x[sb], m[sb], x[in_sr], m[in_sr], settings=FAST_DENSITY, device="cpu", progress=False)
    s_latent = lacathode(x[sb], m[sb], x[in_sr], m[in_sr], settings=FAST_DENSITY, classifier=FAST_CLASSIFIER, folds=3,
                         device="cpu", progress=False)
    y = labels[in_sr]
    for scores in (s_cathode, s_cwola, s_ideal, s_anode, s_latent):
        assert auc(scores.sr, y) > 0.85, scores.method
    # and on fresh events, scored by the ensemble of the folds
    x_new, m_new, y_new = toy_events(4000, 400, seed=8)
    keep = (m_new > sr[0]) & (m_new < sr[1]) | (y_new == 1)
    assert max_sic(s_cathode(x_new[keep], m_new[keep]), y_new[keep]) > 3


def test_lacathode_cut_keeps_the_background_mass_spectrum_where_cathode_sculpts_it():
    # x₀'s mean grows with m: a score of x alone (CATHODE's) passes more background at high m;
    # a score of the latent z = f(x | m) (LaCATHODE's) passes the same fraction at every m
    x, m, _ = toy_events(12000, 250, seed=6)
    sr = (3.4, 3.6)
    in_sr, sb = (m > sr[0]) & (m < sr[1]), (m <= sr[0]) | (m >= sr[1])
    background = ConditionalDensity.fit(x[sb], m[sb], FAST_DENSITY, "cpu", progress=False)
    x_b, m_b, _ = toy_events(30000, 0, seed=10)
    edges = np.linspace(3.0, 4.0, 11)
    p_values = {}
    for method, extra in ((cathode, {"sr": sr}), (lacathode, {})):
        scores = method(x[sb], m[sb], x[in_sr], m[in_sr], background=background, classifier=FAST_CLASSIFIER, folds=3,
                        device="cpu", progress=False, **extra)
        threshold = np.quantile(scores.sr, 0.8)
        p_values[method.__name__] = sculpting(m_b, scores(x_b, m_b) > threshold, edges)["p_value"]
    assert p_values["cathode"] < 1e-6, p_values
    assert p_values["lacathode"] > 1e-3, p_values


@pytest.mark.parametrize("settings", [FAST_CLASSIFIER, FAST_TREES], ids=["nn", "trees"])
def test_one_fold_scores_of_new_events_are_distributed_as_the_out_of_fold_scores(settings):
    rng = np.random.default_rng(11)
    a, b = rng.normal(0.3, 1, (3000, 2)), rng.normal(0, 1, (3000, 2))
    fitted = cross_fit(a, b, folds=4, settings=settings, device="cpu", progress=False)
    fresh = rng.normal(0.3, 1, (40_000, 2))  # like the label-1 events
    one = fitted.predict_one(fresh, seed=1)
    each = np.stack([member.predict(fresh) for member in fitted.members])
    assert np.all(np.isclose(one[None, :], each).any(axis=0))  # every score is one classifier's
    for keep in (0.2, 0.05):
        threshold = np.quantile(fitted.out_of_fold, 1 - keep)
        assert (one > threshold).mean() == pytest.approx(keep, rel=0.25)


def test_cross_fit_resumes_from_its_finished_folds(tmp_path):
    rng = np.random.default_rng(9)
    a, b = rng.normal(0.8, 1, (600, 2)), rng.normal(0, 1, (600, 2))
    first = cross_fit(a, b, folds=3, settings=FAST_CLASSIFIER, device="cpu", progress=False, checkpoint=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fold0.nfapps", "fold1.nfapps", "fold2.nfapps"]
    (tmp_path / "fold2.nfapps").unlink()  # interrupted while training the last fold
    again = cross_fit(a, b, folds=3, settings=FAST_CLASSIFIER, device="cpu", progress=False, checkpoint=tmp_path)
    assert np.array_equal(again.out_of_fold, first.out_of_fold)
    with pytest.raises(ValueError, match="trained on other events or settings"):
        cross_fit(a, b + 1, folds=3, settings=FAST_CLASSIFIER, device="cpu", progress=False, checkpoint=tmp_path)
    trees = tmp_path / "trees"  # boosted trees train in seconds: they are retrained, not kept
    cross_fit(a, b, folds=3, settings=FAST_TREES, device="cpu", progress=False, checkpoint=trees)
    assert not trees.exists()


def test_tree_classifiers_find_an_injected_signal_with_cathode_and_cwola():
    x, m, labels = toy_events(12000, 250, seed=6)
    sr = (3.4, 3.6)
    in_sr, sb = (m > sr[0]) & (m < sr[1]), (m <= sr[0]) | (m >= sr[1])
    y = labels[in_sr]
    s_cathode = cathode(x[sb], m[sb], x[in_sr], m[in_sr], sr, settings=FAST_DENSITY, classifier=FAST_TREES, folds=3,
                        device="cpu", progress=False)
    s_cwola = cwola(x[sb], x[in_sr], FAST_TREES, folds=3, device="cpu", progress=False)
    for scores in (s_cathode, s_cwola):
        assert auc(scores.sr, y) > 0.85, scores.method


@pytest.mark.parametrize("change, message", [({"model": "bdt"}, "must be one of"), ({"trees": 0}, "trees ≥ 1"),
                                             ({"max_iter": 0}, "max_iter ≥ 1")])
def test_bad_classifier_settings_give_one_clear_line(change, message):
    with pytest.raises(ValueError, match=message):
        ClassifierSettings(**change)
