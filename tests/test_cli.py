"""The ``nfapps`` command and ``python -m nfapps``."""

import json
import subprocess
import sys

import pytest

import nfapps
from nfapps.cli import main


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "toy" in out and "Normalizing flows" in out


def test_python_dash_m_is_the_same_command():
    done = subprocess.run([sys.executable, "-m", "nfapps", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and nfapps.__version__ in done.stdout


def test_toy_job_writes_samples_plot_summary_and_a_reloadable_flow(tmp_path, capsys):
    out = tmp_path / "toy"
    args = ["-q", "toy", "--out", str(out), "--epochs", "2", "--train-size", "2000", "--samples", "500", "--device", "cpu"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    result = json.loads((out / "result.json").read_text())
    assert summary["test_nll"] == result["test_nll"] and result["training"]["epochs_run"] == 2
    assert (out / "density.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (out / "samples.csv").read_text().splitlines()
    assert lines[0] == "x1,x2" and len(lines) == 501
    flow = nfapps.load(out / "flow.nfapps")
    assert flow.log_prob([[0.0, 0.0]]).shape == (1,)
    # Running again finds the finished checkpoint and resumes instead of starting over.
    assert main(args) == 0
    again = json.loads((out / "result.json").read_text())
    assert again["test_nll"] == pytest.approx(result["test_nll"], abs=1e-6)


def test_bad_arguments_give_a_one_line_error(tmp_path, capsys):
    assert main(["toy", "--out", str(tmp_path), "--epochs", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nfapps: error:") and "\n" not in err
