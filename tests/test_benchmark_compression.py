"""The compression benchmark's measurements on known answers (the benchmark itself is not a timed test)."""

import math
from pathlib import Path

import numpy as np
import pytest

from conftest import import_script

SCRIPT = Path(__file__).resolve().parents[1] / "applications" / "benchmarks" / "compression.py"


@pytest.fixture(scope="module")
def bench():
    import sys

    module = import_script(SCRIPT, "compression_benchmark")
    yield module
    sys.modules.pop("compression_benchmark", None)


def test_bd_rate_of_a_curve_against_itself_and_a_cheaper_copy(bench):
    anchor = [(r, 30 + 6 * math.log2(r)) for r in (0.25, 0.5, 1.0, 2.0)]
    assert bench.bd_rate(anchor, anchor) == pytest.approx(0.0, abs=1e-9)
    cheaper = [(0.8 * r, q) for r, q in anchor]  # the same PSNR for 20 % fewer bits
    assert bench.bd_rate(anchor, cheaper) == pytest.approx(-20.0, abs=1e-6)
    assert math.isnan(bench.bd_rate(anchor, [(1.0, 50.0), (2.0, 60.0)]))  # no PSNR overlap


def test_psnr_interpolation_is_linear_in_log_rate(bench):
    points = [(0.5, 30.0), (2.0, 36.0)]
    assert bench.interpolate_psnr(points, 1.0) == pytest.approx(33.0)
    assert math.isnan(bench.interpolate_psnr(points, 4.0))


def test_classical_codec_round_trip_and_recompression_bookkeeping(bench):
    codec = bench.classical_codecs()["JPEG"]
    pixels = np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    cycles = bench.recompress(lambda p: codec["encode"](p, 75), codec["decode"], pixels, [1, 3])
    assert set(cycles) == {"1", "3"} and all(math.isfinite(v) for v in cycles.values())
