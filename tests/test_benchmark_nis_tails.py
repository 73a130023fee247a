"""The tail benchmark (applications/benchmarks/nis_tails.py): a sampler's true variance from exact
draws of the integrand."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import import_script

SCRIPT = Path(__file__).resolve().parents[1] / "applications" / "benchmarks" / "nis_tails.py"


@pytest.fixture(scope="module")
def tails():
    yield import_script(SCRIPT, "nfapps_bench_nis_tails")
    sys.modules.pop("nfapps_bench_nis_tails", None)


def test_ratio_statistics_of_a_perfect_and_of_a_known_sampler(tails):
    perfect = tails.ratio_statistics(torch.zeros(1000, dtype=torch.float64))
    assert perfect["mean_ratio"] == 1 and perfect["true_relative_std"] == 0 and perfect["max_ratio"] == 1
    # p = N(0, 1) against q = N(0, s²): E_p[p/q] = ∫ p²/q = s²/√(2s² − 1), 4/√7 at s = 2
    x = torch.randn(400_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    log_ratio = torch.distributions.Normal(0.0, 1.0).log_prob(x) - torch.distributions.Normal(0.0, 2.0).log_prob(x)
    known = tails.ratio_statistics(log_ratio)
    assert known["mean_ratio"] == pytest.approx(4 / math.sqrt(7), abs=4 * known["mean_ratio_error"])
    assert known["true_relative_std"] == pytest.approx(math.sqrt(4 / math.sqrt(7) - 1), rel=0.02)


def test_quick_run_measures_the_truth_its_draws_agree_with(tails, tmp_path):
    result = tails.main(["--integrands", "gaussian-2", "--seeds", "0", "0", "--calls", "2e4", "--points", "2e4",
                         "--threads", "1", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "nis-tails.json").read_text())
    assert (tmp_path / "nis-tails.png").stat().st_size > 0 and written["records"] == json.loads(json.dumps(result["records"]))
    (record,) = result["records"]
    assert record["integrand"] == "gaussian-2" and record["points"] == 20_000
    for sampler in ("flow", "chosen"):
        stats = record[sampler]
        assert stats["mean_ratio"] >= 1 - 4 * stats["mean_ratio_error"]
        assert stats["max_ratio"] >= stats["q9999_ratio"] >= stats["q999_ratio"] > 0
    # a smooth 2-D Gaussian has light tails: its own draws see the truth
    assert record["drawn_relative_std"] == pytest.approx(record["chosen"]["true_relative_std"], rel=0.2)
    assert "true = √(E_p[p/q] − 1)" in result["table"]
