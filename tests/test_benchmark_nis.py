"""The NIS benchmark (applications/benchmarks/nis.py) runs end to end in its smoke mode."""

import json
import math
import sys
from pathlib import Path

import pytest
from conftest import import_script

SCRIPT = Path(__file__).resolve().parents[1] / "applications" / "benchmarks" / "nis.py"


@pytest.fixture(scope="module")
def nis():
    yield import_script(SCRIPT, "nfapps_bench_nis")
    sys.modules.pop("nfapps_bench_nis", None)


def test_quick_run_writes_every_field_and_honest_estimates(nis, tmp_path):
    result = nis.main(["--quick", "--out", str(tmp_path)])
    # the suite split over two processes merges into one judged table
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    for path, keep in ((first, 0), (second, 1)):
        part = json.loads((tmp_path / "nis.json").read_text())
        part["integrands"] = [part["integrands"][keep]]
        path.write_text(json.dumps(part))
    merged = nis.main(["--quick", "--merge", str(first), str(second), "--out", str(tmp_path / "merged"), "--no-plot"])
    assert [r["integrand"] for r in merged["integrands"]] == list(nis.QUICK_INTEGRANDS)
    assert merged["integrands"] == json.loads(json.dumps(result["integrands"], default=float))
    assert merged["targets"]["measured"] == result["targets"]["measured"]
    written = json.loads((tmp_path / "nis.json").read_text())
    assert (tmp_path / "nis.png").stat().st_size > 0
    assert written["settings"]["calls"] == result["settings"]["calls"] == 20_000
    methods = written["methods"]
    assert methods[0] == "nfapps" and methods == (["nfapps", "vegas"] if written["environment"]["vegas"] else ["nfapps"])

    rows = written["integrands"]
    assert [r["integrand"] for r in rows] == list(nis.QUICK_INTEGRANDS)
    for row in rows:
        for method in methods:
            record = row[method]
            assert set(nis.RECORD_FIELDS) <= set(record), set(nis.RECORD_FIELDS) - set(record)
            assert record["exact"] == row["exact"]
            # the budget: every call counted, none beyond it
            assert 0.9 * 20_000 <= record["calls_total"] <= 20_000
            assert record["calls_estimate"] <= record["calls_total"] - record["calls_training"]
            # an unbiased estimate with an honest error bar: within 5σ of the exact value
            assert record["error"] > 0 and abs(record["value"] - row["exact"]) < 5 * record["error"], (row["integrand"], method)
            assert math.isclose(record["pull"], (record["value"] - row["exact"]) / record["error"])
            assert math.isclose(record["relative_std"] / math.sqrt(record["calls_estimate"]),
                                record["error"] / abs(record["value"]), rel_tol=1e-6)
            for key in nis.EFFICIENCIES:
                assert 0 < record[key] <= 1
        if "vegas" in methods:
            assert row["vegas"]["replay_ok"]  # the weights are those of vegas's own estimate
            assert math.isclose(row["variance_ratio"], (row["vegas"]["relative_std"] / row["nfapps"]["relative_std"]) ** 2)
            assert set(row["efficiency_ratio"]) == set(nis.EFFICIENCIES)

    assert [c["dim"] for c in written["sampler_cost"]] == [2, 4]
    assert all(c["us_per_point"] > 0 for c in written["sampler_cost"])
    targets = written["targets"]["rows"]
    assert {t["passed"] for t in targets} <= {True, False, None}
    assert any(t["target"].startswith("sampler") and t["passed"] is not None for t in targets)
    assert all(t["passed"] is None for t in targets if t["target"].startswith("pulls"))  # no --pulls: not measured
    assert "rsd/event" in written["table"] and written["pulls"] is None


def test_pulls_mode_summarises_every_seed(nis, tmp_path):
    result = nis.main(["--quick", "--pulls", "3", "--integrands", "gaussian-2", "--no-plot", "--out", str(tmp_path)])
    assert not (tmp_path / "nis.png").exists()
    assert len(result["runs"]) == 3 and {r["seed"] for r in result["runs"]} == {0, 1, 2}
    for method in result["methods"]:
        pooled = result["pulls"][method]["pooled"]
        assert pooled["n"] == 3
        assert set(pooled) == {"n", "mean", "std", "coverage_1sigma", "coverage_2sigma", "max_abs", "ks_pvalue"}
        assert 0 <= pooled["ks_pvalue"] <= 1
        pulls = [r[method]["pull"] for r in result["runs"]]
        assert math.isclose(pooled["mean"], sum(pulls) / 3)
        assert pooled["coverage_1sigma"] == sum(abs(p) < 1 for p in pulls) / 3
    # fewer than 100 seeds: the pull targets are reported but not judged
    assert all(t["passed"] is None for t in result["targets"]["rows"] if t["target"].startswith("pulls"))
    # every seed keeps only what the pulls need, so that a long study stays small ...
    assert set(result["runs"][0]["nfapps"]) <= set(nis.PER_SEED_FIELDS)
    # ... and split studies still merge into the pulls of the whole
    other = nis.main(["--quick", "--pulls", "3", "--integrands", "camel-2", "--no-plot", "--no-timing", "--out", str(tmp_path / "b")])
    assert other["sampler_cost"] == [] and not any(t["target"].startswith("sampler") for t in other["targets"]["rows"])
    merged = nis.main(["--quick", "--merge", str(tmp_path / "nis.json"), str(tmp_path / "b" / "nis.json"), "--no-plot",
                       "--out", str(tmp_path / "merged"), "--provenance", "two parts"])
    assert merged["provenance"] == "two parts"
    assert [r["integrand"] for r in merged["integrands"]] == ["gaussian-2", "camel-2"]
    for method in result["methods"]:
        per = merged["pulls"][method]["per_integrand"]
        assert per["gaussian-2"] == result["pulls"][method]["per_integrand"]["gaussian-2"]
        assert per["camel-2"] == other["pulls"][method]["per_integrand"]["camel-2"]
    # parts may also split the seeds, at another budget: one row per integrand (its first seed),
    # the pulls of all seeds, and each budget named
    nis.main(["--quick", "--pulls", "2", "--seed", "3", "--calls", "1e4", "--integrands", "gaussian-2", "--no-plot",
              "--out", str(tmp_path / "c")])
    three = nis.main(["--quick", "--merge", *(str(tmp_path / d / "nis.json") for d in (".", "b", "c")), "--no-plot",
                      "--out", str(tmp_path / "merged3")])
    assert [(r["integrand"], r["seed"]) for r in three["integrands"]] == [("gaussian-2", 0), ("camel-2", 0)]
    gaussian = three["pulls"]["nfapps"]["per_integrand"]["gaussian-2"]
    assert gaussian["n"] == 5 and gaussian["calls"] == [10_000, 20_000]
    assert "1e4/2e4" in three["table"]


def test_an_interrupted_study_resumes_where_it_stopped(nis, tmp_path, monkeypatch):
    argv = ["--quick", "--no-vegas", "--pulls", "3", "--integrands", "gaussian-2", "--no-plot", "--no-timing",
            "--out", str(tmp_path)]
    real_run, calls = nis.run_nfapps, []

    def killed_at_the_third(f, s, seed):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(seed)
        return real_run(f, s, seed)

    monkeypatch.setattr(nis, "run_nfapps", killed_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        nis.main(argv)
    journal = tmp_path / nis.JOURNAL
    assert calls == [0, 1] and len(journal.read_text().splitlines()) == 3  # settings + two runs
    with journal.open("a") as f:
        f.write('{"seed": 2, "integr')  # torn by the kill: dropped, that run done again
    finished = []
    monkeypatch.setattr(nis, "run_nfapps", lambda f, s, seed: finished.append(seed) or real_run(f, s, seed))
    result = nis.main(argv)
    assert finished == [2] and [r["seed"] for r in result["runs"]] == [0, 1, 2]
    assert not journal.exists() and result["pulls"]["nfapps"]["pooled"]["n"] == 3
    # a journal of another budget is not mixed in
    nis.append_journal(journal, {"settings": nis._run_key(nis.Settings(calls=5), ["nfapps"])})
    with pytest.raises(SystemExit, match="other settings"):
        nis.main(argv)


def test_no_vegas_runs_nfapps_alone(nis, tmp_path):
    result = nis.main(["--quick", "--no-vegas", "--integrands", "camel-2", "--no-plot", "--out", str(tmp_path)])
    assert result["methods"] == ["nfapps"] and "vegas" not in result["integrands"][0]
    assert all(t["passed"] is None for t in result["targets"]["rows"] if "VEGAS" in t["target"])


def test_targets_judge_the_issue_thresholds(nis):
    def row(name, rsd_n, rsd_v, eff_ratio=3.0, pull=0.5):
        f = nis.INTEGRANDS[name]
        return {"integrand": name, "dim": f.dim, "group": nis.group(f),
                "nfapps": {"relative_std": rsd_n, "pull": pull}, "vegas": {"relative_std": rsd_v},
                "variance_ratio": (rsd_v / rsd_n) ** 2, "efficiency_ratio": dict.fromkeys(nis.EFFICIENCIES, eff_ratio)}

    # camel-16 missed a mode: a small spread around a wrong value passes nothing
    rows = [row("camel-8", 0.25, 1.7), row("gaussian-4", 0.5, 0.2), row("circles", 0.1, 0.2, eff_ratio=1.5),
            row("camel-16", 0.14, 23.8, eff_ratio=100, pull=-4700)]
    def pull_stats(n, mean, std=1.0, coverage=0.69, max_abs=3.0):
        return {"n": n, "mean": mean, "std": std, "coverage_1sigma": coverage, "coverage_2sigma": 0.95,
                "max_abs": max_abs, "ks_pvalue": 0.5}

    pulls = {"nfapps": {"pooled": pull_stats(1000, 0.02, max_abs=3.9),
                        "per_integrand": {"camel-8": pull_stats(100, 0.05), "circles": pull_stats(100, 0.05, std=1.2),
                                          "camel-2": pull_stats(100, -0.15), "gaussian-4": pull_stats(99, 0.5)}}}
    out = nis.check_targets(rows, pulls, 100, [{"dim": 16, "batch": 65536, "us_per_point": 6.0}])
    verdict = {(t["target"].split(" (")[0], t["integrand"]): t["passed"] for t in out["rows"]}
    assert verdict[("relative std per event", "camel-8")] is True
    assert verdict[("variance ratio VEGAS/nfapps", "camel-8")] is True  # (1.7/0.25)² = 46 ≥ 10
    assert verdict[("relative std per event", "circles")] is False  # 0.1 > 0.07
    assert verdict[("relative std / VEGAS's", "gaussian-4")] is False  # 2.5× VEGAS's
    assert verdict[("unweighting eff. / VEGAS's", "camel-8")] is True
    assert verdict[("unweighting eff. / VEGAS's", "circles")] is False
    assert verdict[("relative std per event", "camel-4")] is None  # not run
    assert verdict[("|pull| of the estimate", "camel-16")] is False and verdict[("|pull| of the estimate", "camel-8")]
    assert verdict[("relative std per event", "camel-16")] is False  # 0.14 ≤ 1.5, but the answer is wrong
    assert verdict[("variance ratio VEGAS/nfapps", "camel-16")] is False
    assert verdict[("unweighting eff. / VEGAS's", "camel-16")] is False
    assert all(t["passed"] for t in out["rows"] if t["target"].startswith("pulls ("))  # pooled
    per = {t["integrand"]: t["passed"] for t in out["rows"] if t["target"].startswith("pulls of one integrand")}
    assert per == {"camel-8": True, "circles": False, "camel-2": False}  # gaussian-4: too few seeds to judge
    assert verdict[("sampler µs/point", "d=16")] is False
    # a pull study's budget: its spreads are reported, judged only at the issue's 1e6 calls
    small = nis.check_targets([{**r, "calls": 20_000} for r in rows], None, 0, [])["rows"]
    assert [t["passed"] for t in small if t["target"] == "relative std per event" and t["integrand"] == "circles"] == [None]
    assert all(t["passed"] is None for t in small if "VEGAS" in t["target"])
    assert [t["passed"] for t in small if t["target"].startswith("|pull|")] == [True, True, True, False]
