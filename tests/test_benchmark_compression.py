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
    cycles, last = bench.recompress(lambda p: codec["encode"](p, 75), codec["decode"], pixels, [1, 3])
    assert last.shape == pixels.shape
    assert set(cycles) == {"1", "3"} and all(math.isfinite(v) for v in cycles.values())


def test_learned_codecs_by_lambda_decode_with_the_model_the_file_names(bench):
    import torch

    from nfapps.codec import CodecConfig, FlowCodec, ImageCodec

    models = {}
    for lmbda, gain in ((0.01, 1.0), (0.1, 4.0)):
        torch.manual_seed(0)
        model = FlowCodec(CodecConfig(levels=2, steps=1, hidden=8, initial_gain=gain))
        model(torch.rand(1, 3, 16, 16) - 0.5)
        models[lmbda] = ImageCodec(model)
    codec = bench.as_codec(models)
    assert codec["settings"] == [0.01, 0.1]
    pixels = np.random.default_rng(1).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    for lmbda, model in models.items():
        data = codec["encode"](pixels, lmbda)
        np.testing.assert_array_equal(codec["decode"](data), model.decode(data))
    assert len(codec["encode"](pixels, 0.1)) > len(codec["encode"](pixels, 0.01))  # the finer step costs more


def test_recompression_stops_at_a_fixed_point_with_the_same_figures(bench):
    pixels = np.random.default_rng(2).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    calls = []

    def encode(p):
        calls.append(1)
        return (p // 2 * 2).tobytes()  # a lossy codec that is idempotent after one cycle

    def decode(data):
        return np.frombuffer(data, dtype=np.uint8).reshape(8, 8, 3)

    psnrs, last = bench.recompress(encode, decode, pixels, [1, 2, 5, 50])
    assert len(calls) == 2 and set(psnrs) == {"1", "2", "5", "50"}
    assert psnrs["1"] == psnrs["2"] == psnrs["5"] == psnrs["50"] and np.array_equal(last, pixels // 2 * 2)


def test_auto_entropy_model_names_each_flow_model_as_training_chooses(bench, tmp_path):
    import argparse

    from nfapps.codec import entropy_model_for

    args = argparse.Namespace(entropy_model="auto", work=str(tmp_path))
    assert [entropy_model_for(lmbda) for lmbda in (0.003, 0.04, 0.1, 1.2)] == ["factorized"] * 2 + ["conditional"] * 2
    assert entropy_model_for(50.0, "ms-ssim") == "factorized"
    assert entropy_model_for(0.01, choice="hyperprior") == "hyperprior"
    assert bench.model_path("flow", 0.3, args).name == "flow-conditional-0.3.nfc"
    assert bench.model_path("flow", 0.01, args).name == "flow-factorized-0.01.nfc"
    args.entropy_model = "hyperprior"
    assert bench.model_path("flow", 0.01, args).name == "flow-hyperprior-0.01.nfc"
    assert bench.model_path("bmshj2018-hyperprior", 0.01, args).name == "baseline-bmshj2018-hyperprior-0.01.nfc"
