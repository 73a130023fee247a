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
