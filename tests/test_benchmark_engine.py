"""The engine benchmark (applications/benchmarks/engine.py) runs end to end in its smoke mode."""

import json
import sys
from pathlib import Path

import pytest
from conftest import import_script

SCRIPT = Path(__file__).resolve().parents[1] / "applications" / "benchmarks" / "engine.py"


@pytest.fixture(scope="module")
def engine():
    yield import_script(SCRIPT, "nfapps_bench_engine")
    sys.modules.pop("nfapps_bench_engine", None)


def test_quick_run_writes_table_json_and_chart(engine, tmp_path):
    result = engine.main(["--quick", "--out", str(tmp_path)])
    libraries = list(result["environment"]["libraries"])
    assert libraries[0] == "nfapps"

    written = json.loads((tmp_path / "engine.json").read_text())
    assert written["settings"]["batch"] == result["settings"]["batch"] == 64
    assert (tmp_path / "engine.png").stat().st_size > 0

    rows = written["timings"]
    assert len(rows) == len(engine.FLOWS) * len(engine.TASKS) * len(libraries)
    for row in rows:
        assert row["samples_per_s"] > 0 and row["best_s"] <= row["median_s"]
        if row["library"] == "nfapps":
            assert row["speedup"] == 1.0

    trips = written["round_trip"]
    assert len(trips) == len(engine.FLOWS) * len(libraries) * 2
    ours = [t for t in trips if t["library"] == "nfapps"]
    assert all(t["finite"] and t["max_abs_error"] <= engine.ROUND_TRIP_TOLERANCE for t in ours)
    assert written["targets"]["round_trip_ok"]
    assert "speed-up" in written["table"]


def test_only_nfapps_has_no_peer_targets(engine, tmp_path):
    result = engine.main(["--quick", "--only", "nfapps", "--no-plot", "--out", str(tmp_path)])
    assert list(result["environment"]["libraries"]) == ["nfapps"]
    assert result["targets"]["rows"] == []
    assert not (tmp_path / "engine.png").exists()


def test_same_architecture_in_every_library(engine):
    """Equal parameter counts up to the spline's two learned tail slopes per transformed feature."""
    s = engine.Settings(dim=6, layers=2, hidden=(8, 8), bins=4, batch=4)
    libraries = engine.available_libraries()
    for kind in engine.FLOWS:
        counts = {lib: sum(p.numel() for p in engine.build(lib, kind, s).module.parameters()) for lib in libraries}
        extra = 2 * (s.dim // 2) * s.layers * (s.hidden[-1] + 1) if kind == "spline" else 0
        assert all(counts[lib] == counts["nfapps"] - extra for lib in libraries if lib != "nfapps"), counts
