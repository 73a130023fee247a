import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# Small tensors on a 2-core CI machine: extra intra-op threads only contend.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


def perturb(module: torch.nn.Module, scale: float = 0.1, seed: int = 1) -> None:
    """Move every parameter away from its (often identity) initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def import_script(path: Path, name: str):
    """Import a script (a benchmark, a torchrun script) as module ``name``; registered in
    sys.modules because dataclasses resolve annotations through it — remove it when done."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


#: What gloo prints when it aborts a rank as the interpreter shuts down, after all the work is done.
GLOO_EXIT_ABORT = "terminate called without an active exception"


def torchrun(*args: str, processes: int = 2, timeout: int = 240) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=processes args…`` with one thread per process;
    fails the test unless it exits cleanly.

    Known and open: under CPU load gloo can abort a rank at interpreter shutdown, after the work
    (about 1 run in 8 on a loaded 2-core box). A run that fails with exactly that is retried once;
    any other failure, or two in a row, fails.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *args]
    for attempt in range(2):
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        if run.returncode == 0 or GLOO_EXIT_ABORT not in run.stderr or attempt:
            break
    assert run.returncode == 0, run.stderr[-4000:]
    return run
