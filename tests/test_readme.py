"""The README's library example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no python example"
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        namespace: dict = {}
        exec(compile(block.replace('device="auto"', 'device="auto", progress=False'), str(README), "exec"), namespace)
    assert namespace["samples"].shape == (2, 100, 4)
    assert namespace["x"].shape == (1000, 2)
