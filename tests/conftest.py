import importlib.util
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
