"""The anomaly search end to end: synthetic events → files → `nfapps anomaly search` → results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nfapps.anomaly.bumphunt import bump_hunt
from nfapps.anomaly.classifier import ClassifierSettings
from nfapps.anomaly.density import DensitySettings
from nfapps.anomaly.job import DEFAULT_FLOW_ENSEMBLE, flow_ensemble_for, run_generate
from nfapps.anomaly.readers import read_events
from nfapps.anomaly.search import SearchSettings, default_fit_range, run_search
from nfapps.anomaly.synthetic import DijetModel, make_dataset
from nfapps.cli import main

FEATURES = ["mj1", "delta_mj", "tau21_1", "tau21_2"]
FAST = dict(density=DensitySettings(epochs=6, transforms=3, hidden=(32, 32)),
            classifier=ClassifierSettings(epochs=5, top_epochs=2, hidden=(32, 32)), folds=2)


@pytest.fixture(scope="module")
def events_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("anomaly") / "events.h5"
    run_generate(path, background=25_000, s_over_b=0.08, seed=1)
    return path


def stored_settings(tmp_path) -> dict:
    return json.loads((tmp_path / "run" / "summary.json").read_text())["settings"]


@pytest.mark.parametrize("method", ["cathode", "lacathode"])
def test_search_finds_the_injected_signal_and_writes_every_output(events_file, tmp_path, method):
    events = read_events(events_file, "mjj", FEATURES, label="label")
    ensemble = 2 if method == "cathode" else 1  # cathode's densities mixtures of two flows, as the command's are
    fast = {**FAST, "density": DensitySettings(**{**FAST["density"].__dict__, "ensemble": ensemble})}
    summary = run_search(events, tmp_path / "run", SearchSettings(sr=(3.3, 3.7), method=method, **fast), device="cpu",
                         progress=False)
    assert summary["sr_signal"] > 150 and 0.06 < summary["sr_s_over_b"] < 0.10
    assert summary["max_sic"] > 3  # chance is ≈ 1
    assert 0.4 < summary["two_sample_auc_control"] < 0.6
    for name in ("summary.json", "scores.csv", "features.png", "sic.png", "spectrum_0.2.png", "background-folds.nfapps"):
        assert (tmp_path / "run" / name).is_file(), name
    assert stored_settings(tmp_path)["flow_folds"] == 2  # cross-fitted densities by default
    assert stored_settings(tmp_path)["density"]["ensemble"] == ensemble
    assert (tmp_path / "run" / "background-folds" / "fold1-1.ckpt").is_file() == (ensemble == 2)
    with pytest.raises(ValueError, match="background-folds.nfapps was trained with other density settings \\(flow_folds 2 ≠ 3\\)"):
        run_search(events, tmp_path / "run", SearchSettings(sr=(3.3, 3.7), method=method, **{**fast, "flow_folds": 3}),
                   device="cpu", progress=False)
    stored = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert stored["max_sic"] == pytest.approx(summary["max_sic"])
    hunt = stored["bump_hunt"][0]
    assert hunt["sr_efficiency"] == 0.2 and np.isfinite(hunt["significance"]) and "sculpting" in hunt
    assert ("warning" in hunt) == (hunt["sculpting"]["p_value"] < 1e-3)  # a sculpting cut is flagged
    rows = (tmp_path / "run" / "scores.csv").read_text().splitlines()
    assert rows[0] == "event,mass,region,score,label" and len(rows) == len(events) + 1


def test_an_interrupted_search_reuses_the_trained_background(events_file, tmp_path):
    events = read_events(events_file, "mjj", FEATURES, label="label")
    settings = SearchSettings(sr=(3.3, 3.7), method="anode", **FAST)
    first = run_search(events, tmp_path / "run", settings, device="cpu", progress=False)
    saved = (tmp_path / "run" / "background.nfapps").read_bytes()
    again = run_search(events, tmp_path / "run", settings, device="cpu", progress=False)
    assert (tmp_path / "run" / "background.nfapps").read_bytes() == saved  # loaded, not retrained
    assert again["max_sic"] == pytest.approx(first["max_sic"])
    other = SearchSettings(**{**settings.__dict__, "density": DensitySettings(**{**FAST["density"].__dict__, "epochs": 7})})
    with pytest.raises(ValueError, match=r"background.nfapps was trained with other density settings \(epochs 6 ≠ 7\)"):
        run_search(events, tmp_path / "run", other, device="cpu", progress=False)
    schedule = "cosine" if FAST["density"].lr_schedule != "cosine" else "constant"
    other = SearchSettings(**{**settings.__dict__, "density": DensitySettings(**{**FAST["density"].__dict__,
                                                                                "lr_schedule": schedule})})
    with pytest.raises(ValueError, match=rf"other density settings \(lr_schedule '{FAST['density'].lr_schedule}' ≠ '{schedule}'\)"):
        run_search(events, tmp_path / "run", other, device="cpu", progress=False)


@pytest.mark.parametrize("classifier", ["nn", "trees"])
def test_cli_generate_and_search(tmp_path, capsys, classifier):
    out = tmp_path / "ev.root"
    assert main(["-q", "anomaly", "generate", "--background", "20000", "--signal", "600", "--out", str(out)]) == 0
    assert main(["-q", "anomaly", "generate", "--background", "10", "--out", str(out)]) == 2  # refuses to overwrite
    assert "refusing to overwrite" in capsys.readouterr().err
    code = main(["-q", "anomaly", "search", "--input", str(out), "--mass", "mjj", "--features", *FEATURES, "--label", "label",
                 "--sr", "3.3", "3.7", "--method", "cwola", "--out", str(tmp_path / "run"), "--classifier-epochs", "3",
                 "--folds", "2", "--device", "cpu", "--classifier", classifier])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["method"] == "cwola" and printed["max_sic"] > 1


@pytest.mark.parametrize("override, message", [
    ({"--input": ["missing.h5"]}, "not found"),
    ({"--features": ["mj1", "nope"]}, "nope"),
    ({"--sr": ["3.7", "3.3"]}, "low < high"),
    ({"--sr": ["7.0", "8.0"]}, "at least 50"),
    ({"--method": ["magic"]}, "method must be one of"),
    ({"--method": ["lacathode"], "--flow-ensemble": ["3"]}, "lacathode needs one flow per background density"),
    ({"--flow-ensemble": ["0"]}, "the flow ensemble must be an integer ≥ 1"),
])
def test_cli_search_bad_input_gives_one_clear_line(events_file, tmp_path, capsys, override, message):
    options = {"--input": [str(events_file)], "--mass": ["mjj"], "--features": FEATURES, "--sr": ["3.3", "3.7"],
               "--out": [str(tmp_path / "run")], "--method": ["cwola"], **override}
    argv = ["-q", "anomaly", "search"] + [item for key, values in options.items() for item in (key, *values)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_the_command_mixes_flows_by_default_except_for_lacathode():
    assert flow_ensemble_for("cathode") == flow_ensemble_for("anode") == DEFAULT_FLOW_ENSEMBLE > 1
    assert flow_ensemble_for("lacathode") == 1  # its latent space needs one flow
    assert flow_ensemble_for("cathode", 1) == 1 and flow_ensemble_for("anode", 5) == 5


def test_default_fit_range_starts_above_the_trigger_turn_on():
    m = make_dataset(DijetModel(), 100_000, 0, seed=3)["mjj"]
    low, high = default_fit_range(m, (3.3, 3.7))
    assert 3.0 < low < 3.25 and high == m.max()  # the turn-on (logistic at 2.65, width 0.1) is over by then
    assert abs(bump_hunt(m, np.zeros_like(m), (3.3, 3.7), (low, high)).significance) < 3
    assert 2.7 < default_fit_range(m, (2.9, 3.1))[0] < 2.9  # an SR below the half-peak point: just above the peak
    assert default_fit_range(m, (2.0, 2.5))[0] == m.min()  # no lower sideband either way
