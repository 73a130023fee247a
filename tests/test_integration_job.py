"""The integration job (``nfapps integrate``) and event generation (``nfapps events``): run
directories, bit-identical resumption, one-line errors, HDF5 events whose weights estimate the
integral without bias, and samplers that reload."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

import nfapps
from nfapps.cli import main
from nfapps.integration import get_integrand
from nfapps.integration.estimate import overweight_cap
from nfapps.integration.events import acceptance_rate, generate_events, unweight
from nfapps.integration.integrator import integrate, integrate_defaults
from nfapps.integration.job import DEFAULTS, run_integration

# Tiny runs: 20k calls, a small sampler, a few checkpoints.
SMALL = {"calls": 20_000, "batch": 512, "reuse": 2, "bins": 8, "transforms": 2, "hidden": [16], "pre_map": 8, "chunks": 5}
SMALL_ARGS = ["--calls", "20000", "--batch", "512", "--reuse", "2", "--bins", "8", "--transforms", "2", "--hidden", "16",
              "--pre-map", "8", "--device", "cpu"]
RESULT_KEYS = {
    "value", "error", "relative_std", "effective_sample_size", "unweighting_efficiency",
    "unweighting_efficiency_bootstrap", "bootstrap_replica_size", "unweighting_efficiency_truncated",
    "calls_training", "calls_estimate", "time_integrand_s", "time_sampler_s", "time_training_s", "peak_memory_mb",
    "device", "exact", "pull", "sampler", "calls_pilot",
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished gaussian-2 run through the command line, with 2000 unweighted events."""
    out = tmp_path_factory.mktemp("runs") / "gauss"
    code = main(["-q", "integrate", "gaussian-2", *SMALL_ARGS, "--out", str(out), "--seed", "1", "--events", "2000"])
    assert code == 0
    return out


def test_run_directory_holds_result_sampler_plots_history_and_events(finished, capsys):
    files = {p.name for p in finished.iterdir()}
    assert files == {"run.json", "state.nfapps", "sampler.nfapps", "history.csv", "training.png", "weights.png",
                     "events.h5", "result.json"}
    result = json.loads((finished / "result.json").read_text())
    assert RESULT_KEYS <= set(result["result"])
    f = get_integrand("gaussian-2")
    assert result["integrand"] == "gaussian-2" and result["builtin"] and result["exact"] == f.exact
    assert result["settings"]["seed"] == 1 and result["settings"]["calls"] == 20_000
    r = result["result"]
    # 10 000 training calls: 2 000 adapt the grid (one refinement: 10 points per bin of 128 at least),
    # the flow gets the rest, in whole batches
    assert r["calls_grid"] == 2000 and r["calls_training"] == 2000 + 15 * 512
    assert r["calls_estimate"] + r["calls_pilot"] == 20_000 - r["calls_training"]
    assert result["pull"] == pytest.approx((r["value"] - f.exact) / r["error"]) and abs(result["pull"]) < 5
    assert r["bootstrap_replica_size"] == min(10_000, r["calls_estimate"]) and r["device"] == "cpu"
    assert 0 < r["unweighting_efficiency"] <= r["unweighting_efficiency_truncated"] <= 1
    for plot in ("training.png", "weights.png"):
        assert (finished / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((finished / "history.csv").open()))
    assert [row["phase"] for row in rows] == ["grid"] + ["flow"] * 15 and int(rows[-1]["training_calls"]) == 2000 + 15 * 512
    assert float(rows[-1]["relative_std"]) < float(rows[0]["relative_std"])
    # The sampler reloads as a plain flow on [0, 1]^2 and gives the estimate's weights again.
    sampler = nfapps.load(finished / "sampler.nfapps")
    with torch.no_grad():
        u, log_q = sampler.sample_and_log_prob(1000, generator=torch.Generator().manual_seed(0))
    w = f(u.double()) / log_q.double().exp()
    assert abs(w.mean().item() - f.exact) < 5 * w.std().item() / math.sqrt(1000)
    assert result["events"]["mode"] == "unweighted" and result["events"]["n_requested"] == 2000


def test_finished_run_reports_and_existing_directory_is_never_overwritten(finished, capsys):
    before = (finished / "result.json").read_bytes()
    args = ["-q", "integrate", "gaussian-2", *SMALL_ARGS, "--out", str(finished), "--seed", "1", "--events", "2000"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nfapps: error:") and "\n" not in err and "--resume" in err and "--out" in err
    assert main([*args, "--resume"]) == 0  # finished: just reports
    assert json.loads(capsys.readouterr().out)["value"] == json.loads(before)["value"]
    assert main(["-q", "integrate", "--resume", "--out", str(finished)]) == 0  # settings from the run
    assert (finished / "result.json").read_bytes() == before
    assert main(["-q", "integrate", "--resume", "--out", str(finished), "--seed", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds another run" in err and "seed 1 there, 2 here" in err and "\n" not in err


def test_interrupted_run_resumes_bit_identically(tmp_path):
    f = get_integrand("camel-2")
    straight = run_integration(f.name, out=tmp_path / "straight", seed=3, progress=False, device="cpu", **SMALL)

    class Killed(Exception):
        pass

    def kill_after_chunk_2(k, integrator):
        if k == 2:
            raise Killed

    with pytest.raises(Killed):
        run_integration(f.name, out=tmp_path / "resumed", seed=3, progress=False, device="cpu",
                        on_chunk=kill_after_chunk_2, **SMALL)
    assert not (tmp_path / "resumed" / "result.json").exists()
    with pytest.raises(ValueError, match="not empty.*--resume"):
        run_integration(f.name, out=tmp_path / "resumed", seed=3, progress=False, device="cpu", **SMALL)
    with pytest.raises(ValueError, match="holds another run.*calls 20000 there, 30000 here"):
        run_integration(f.name, out=tmp_path / "resumed", resume=True, progress=False, **{**SMALL, "calls": 30_000})
    resumed = run_integration(out=tmp_path / "resumed", resume=True, progress=False, device="cpu")

    timing = {"time_integrand_s", "time_sampler_s", "time_training_s", "peak_memory_mb"}
    same = {k: v for k, v in straight["result"].items() if k not in timing}
    assert {k: v for k, v in resumed["result"].items() if k not in timing} == same
    assert resumed["settings"] == straight["settings"]
    a, b = (nfapps.load(tmp_path / run / "sampler.nfapps").state_dict() for run in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "straight" / "history.csv").read_text() == (tmp_path / "resumed" / "history.csv").read_text()


def test_user_integrand_from_a_file_on_a_box(tmp_path, capsys):
    file = tmp_path / "mine.py"
    file.write_text("import numpy as np\n\ndef f(x):\n    return np.asarray(x)[:, 0] * np.asarray(x)[:, 1]\n")
    out = tmp_path / "run"
    # ∫_0^1 ∫_-1^3 x y dy dx = ½ · 4 = 2
    code = main(["-q", "integrate", f"{file}:f", "--dim", "2", "--bounds", "0", "1", "-1", "3", *SMALL_ARGS,
                 "--calls", "10000", "--out", str(out)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["exact"] is None and abs(summary["value"] - 2) < 5 * summary["error"]
    result = json.loads((out / "result.json").read_text())
    assert result["bounds"] == [[0.0, 1.0], [-1.0, 3.0]] and result["settings"]["integrand"] == f"{file}:f"


@pytest.mark.parametrize(
    "args,message",
    [
        (["nosuch"], "unknown integrand 'nosuch'"),
        (["camel-4", "--dim", "3"], "camel-4 has dimension 4, but dim 3"),
        (["camel-4", "--bounds", "0", "2"], "unit hypercube"),
        (["{file}:f"], "give the dimension"),
        (["{file}:f", "--dim", "2", "--bounds", "0", "1", "3", "2"], "dimension 1 are \\[3, 2\\]: need finite low < high"),
        (["{file}:f", "--dim", "2", "--bounds", "0", "1", "0"], "2 numbers .* or 2·dim = 4 numbers"),
        (["{file}:f", "--dim", "2"], "raised IndexError"),
        (["{file}:boom", "--dim", "2"], "raised RuntimeError: boom on purpose"),
        (["{file}:missing", "--dim", "2"], "has no function 'missing'"),
        (["{dir}/nofile.py:f", "--dim", "2"], "does not exist"),
        (["gaussian-2", "--calls", "100", "--training-fraction", "1.5"], "training_fraction must be in \\[0, 1\\)"),
        (["gaussian-2", "--grid", "-1"], "grid must be an integer ≥ 0"),
        (["gaussian-2", "--grid-fraction", "1.5"], "grid_fraction must be in \\[0, 1\\]"),
        (["gaussian-2", "--min-ess", "1.5"], "min_ess must be in \\[0, 1\\)"),
    ],
)
def test_bad_inputs_give_one_line_errors_and_write_nothing(tmp_path, capsys, args, message):
    file = tmp_path / "user.py"
    file.write_text("def f(x):\n    return x[:, 0] * x[:, 2]\n\n"
                    "def boom(x):\n    raise RuntimeError('boom on purpose\\nsecond line')\n")
    args = [a.format(file=file, dir=tmp_path) for a in args]
    assert main(["-q", "integrate", *args, "--out", str(tmp_path / "run"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nfapps: error:") and "\n" not in err, err
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "run").exists()


def test_list_shows_the_built_in_integrands(capsys):
    assert main(["integrate", "--list"]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("camel-4 "))
    assert float(line.split()[2]) == pytest.approx(get_integrand("camel-4").exact, rel=1e-12)


def test_unweighting_is_unbiased():
    # Signed, heavy-tailed weights: hit-or-miss against the δ = 1e-3 cap, repeated, averages Σw/N.
    rng = np.random.default_rng(0)
    w = rng.lognormal(0, 1.5, 2000) * np.where(rng.random(2000) < 0.2, -1, 1)
    cap = overweight_cap(w, 1e-3)
    assert (np.abs(w) > cap).any() and 0 < acceptance_rate(w, cap) < 1
    estimates = []
    for _ in range(2000):
        keep, raw = unweight(w, cap, rng.random(w.size))
        estimates.append(raw[keep].sum() / w.size)
    estimates = np.array(estimates)
    error = estimates.std(ddof=1) / math.sqrt(estimates.size)
    assert abs(estimates.mean() - w.mean()) < 4 * error
    keep, raw = unweight(w, cap, rng.random(w.size))
    assert np.all(np.abs(raw) >= cap) and np.all(np.sign(raw) == np.sign(w))
    with pytest.raises(ValueError, match="cap must be positive"):
        unweight(w, 0.0, rng.random(w.size))


def test_events_from_the_reloaded_sampler_estimate_the_integral(finished, tmp_path, capsys):
    f = get_integrand("gaussian-2")
    # The run's own unweighted events.
    with h5py.File(finished / "events.h5", "r") as h:
        x, weight, attrs = h["x"][:], h["weight"][:], dict(h.attrs)
    assert x.dtype == weight.dtype == np.float64 and x.shape == (attrs["n_events"], 2) and weight.shape == (attrs["n_events"],)
    assert attrs["mode"] == "unweighted" and attrs["overweight_delta"] == 1e-3 and attrs["sampler"].endswith("sampler.nfapps")
    assert abs(attrs["n_events"] - 2000) < 5 * math.sqrt(2000) and ((x >= 0) & (x <= 1)).all()
    # Σ weight / n_requested = Σ r / n_tried: unbiased, with the error of a mean over the tried points.
    r = weight / attrs["weight_scale"]
    estimate = weight.sum() / attrs["n_requested"]
    error = math.sqrt(max((r**2).sum() / attrs["n_tried"] - estimate**2, 0) / attrs["n_tried"])
    assert abs(estimate - f.exact) < 5 * error
    assert abs(weight.mean() - f.exact) < 5 * weight.std() / math.sqrt(weight.size) + 5 * error
    assert abs(attrs["integral"] - f.exact) < 5 * attrs["integral_error"]
    assert np.allclose(np.abs(weight[np.abs(r) <= attrs["w_max"]]), attrs["w_max"] * attrs["weight_scale"])

    # Weighted events from the command line, the integrand taken from the sampler file.
    path = tmp_path / "weighted.h5"
    args = ["-q", "events", "--sampler", str(finished / "sampler.nfapps"), "-n", "3000", "--weighted",
            "--out", str(path), "--device", "cpu"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["n_events"] == 3000
    with h5py.File(path, "r") as h:
        weight = h["weight"][:]
        assert h.attrs["mode"] == "weighted" and h.attrs["integrand"] == "gaussian-2" and h["x"].shape == (3000, 2)
    assert abs(weight.mean() - f.exact) < 5 * weight.std(ddof=1) / math.sqrt(weight.size)
    assert main(args) == 2  # never overwritten without --force
    assert "exists" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    # A sampler used for the wrong integrand, or a file that is not a sampler, is refused clearly.
    with pytest.raises(ValueError, match="draws 2-dimensional points, but the integrand camel-4 has dimension 4"):
        generate_events(finished / "sampler.nfapps", "camel-4", 10, tmp_path / "x.h5", progress=False)
    with pytest.raises(ValueError, match="integration run's state .*not a saved flow"):
        generate_events(finished / "state.nfapps", None, 10, tmp_path / "x.h5", progress=False)


def test_killed_process_resumes_bit_identically(tmp_path):
    out = tmp_path / "killed"
    args = ["-q", "integrate", "camel-2", *SMALL_ARGS, "--calls", "60000", "--seed", "5", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "nfapps", *args], env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "state.nfapps").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)  # no chance to clean up: only what is on disk counts
    finally:
        process.wait(timeout=60)
    assert (out / "state.nfapps").exists() and not (out / "result.json").exists()
    assert main([*args, "--resume"]) == 0
    straight = run_integration("camel-2", out=tmp_path / "straight", progress=False, device="cpu",
                               **{**SMALL, "calls": 60_000, "seed": 5, "chunks": None})
    resumed = json.loads((out / "result.json").read_text())
    for key in ("value", "error", "relative_std", "unweighting_efficiency_truncated", "calls_training"):
        assert resumed["result"][key] == straight["result"][key]


def test_a_job_computes_exactly_what_integrate_does(tmp_path):
    # Chunked, checkpointed training (the learning-rate schedule spanning all chunks) changes nothing.
    f = get_integrand("gaussian-2")
    settings = {k: v for k, v in SMALL.items() if k not in ("calls", "chunks")}
    job = run_integration(f.name, calls=12_000, chunks=3, out=tmp_path / "job", seed=2, progress=False, device="cpu",
                          **settings)
    direct = integrate(f, 2, calls=12_000, seed=2, progress=False, device="cpu", exact=f.exact,
                       **{**settings, "hidden": tuple(settings["hidden"])})
    assert job["value"] == direct.value and job["error"] == direct.error and job["pull"] == direct.pull
    assert job["result"]["calls_training"] == direct.calls_training
    # ... and its defaults are integrate()'s.
    defaults = integrate_defaults()
    assert all(DEFAULTS[k] == defaults[k]
               for k in ("batch", "reuse", "lr", "loss", "training_fraction", "estimate_batch", "replica_size"))


def test_a_run_whose_flow_gives_up_resumes_bit_identically(tmp_path):
    """On polynomial-54 (separable) the flow stops training against the VEGAS grid part-way; a run
    killed right after the chunk where it stopped resumes to the same result, the unspent calls in the estimate."""
    settings = {**SMALL, "calls": 80_000, "chunks": 8}
    straight = run_integration("polynomial-54", out=tmp_path / "straight", seed=1, progress=False, device="cpu", **settings)
    r = straight["result"]
    assert r["sampler"] == "grid" and r["calls_grid"] == 8000 and r["calls_training"] < 8000 + 62 * 512
    assert r["calls_training"] + r["calls_pilot"] + r["calls_estimate"] == 80_000

    class Killed(Exception):
        pass

    def kill_once_stopped(k, integrator):
        if integrator.stopped:
            raise Killed

    with pytest.raises(Killed):
        run_integration("polynomial-54", out=tmp_path / "resumed", seed=1, progress=False, device="cpu",
                        on_chunk=kill_once_stopped, **settings)
    resumed = run_integration(out=tmp_path / "resumed", resume=True, progress=False, device="cpu")
    timing = {"time_integrand_s", "time_sampler_s", "time_training_s", "peak_memory_mb"}
    assert {k: v for k, v in resumed["result"].items() if k not in timing} == {k: v for k, v in r.items() if k not in timing}


def test_without_a_grid_the_pilots_choose_between_flow_and_uniform(tmp_path, capsys):
    out = tmp_path / "nogrid"
    assert main(["-q", "integrate", "gaussian-2", *SMALL_ARGS, "--grid", "0", "--out", str(out)]) == 0, capsys.readouterr().err
    r = json.loads((out / "result.json").read_text())["result"]
    assert r["calls_grid"] == 0 and r["calls_training"] == 19 * 512 and r["sampler"] in ("flow", "uniform")
