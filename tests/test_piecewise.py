"""Numerics of the piecewise-linear and piecewise-quadratic maps of [0, 1] on their own, and a
VEGAS-like grid (an element-wise piecewise-linear map) learning a 1-D density."""

import math

import pytest
import torch

import nfapps
from nfapps.builders import NSF
from nfapps.transforms.base import Inverse
from nfapps.transforms.elementwise import Elementwise
from nfapps.transforms.piecewise import (
    PiecewiseLinearMap,
    PiecewiseQuadraticMap,
    bin_index,
    floored_softmax,
    quadratic_knots,
    upper_edges,
)

MAPS = {
    "linear": lambda: PiecewiseLinearMap(8),
    "quadratic": lambda: PiecewiseQuadraticMap(8),
}


def _params(tau, n, scale, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, tau.num_params, generator=g, dtype=dtype)


def _edges(tau, params, inverse):
    """The bin edges of each row of ``params`` on the input axis (output axis when ``inverse``)."""
    if isinstance(tau, PiecewiseLinearMap):
        if inverse:
            return upper_edges(floored_softmax(params, tau.min_density))
        return torch.arange(1, tau.bins + 1, dtype=params.dtype).expand(params.shape[0], -1) / tau.bins
    k = tau.bins
    knots = quadratic_knots(params[:, :k], params[:, k:], tau.min_width, tau.min_density)
    return knots[4] if inverse else knots[3]


@pytest.mark.parametrize("kind", MAPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_parameters_give_the_identity(kind, dtype):
    tau = MAPS[kind]()
    x = torch.cat([torch.linspace(0, 1, 257, dtype=dtype), torch.tensor([1e-7, 1 - 1e-7], dtype=dtype)])
    theta = torch.zeros(x.shape[0], tau.num_params, dtype=dtype)
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    for step in (tau.forward, tau.inverse):
        y, ladj = step(x, theta)
        torch.testing.assert_close(y, x, atol=tol, rtol=0)
        torch.testing.assert_close(ladj, torch.zeros_like(ladj), atol=tol, rtol=0)


@pytest.mark.parametrize("kind", MAPS)
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [30.0, 1e4])
def test_finite_at_the_ends_and_bin_edges_for_extreme_parameters(kind, inverse, dtype, scale):
    """Forward, inverse and every gradient stay finite, and the ends map exactly onto the ends."""
    tau = MAPS[kind]()
    rows = 6
    theta = _params(tau, rows, scale, dtype)
    edges = _edges(tau, theta, inverse)  # (rows, K): every edge of that row's map
    eps, tiny = torch.finfo(dtype).eps, torch.finfo(dtype).tiny
    special = torch.tensor([[0.0, 1e-30, tiny, 0.5, 1 - 1e-7, -1e-3, 1.5]], dtype=dtype).expand(rows, -1)
    points = torch.cat([edges, special, (edges - eps).clamp(min=0), (edges + eps).clamp(max=1)], dim=1)
    x = points.clone().requires_grad_(True)
    p = theta[:, None, :].expand(-1, x.shape[1], -1).clone().requires_grad_(True)
    y, ladj = (tau.inverse if inverse else tau.forward)(x, p)
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
    assert (y >= 0).all() and (y <= 1).all()
    (y.sum() + ladj.sum()).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(p.grad).all()
    step = tau.inverse if inverse else tau.forward
    ends, _ = step(torch.tensor([0.0, 1.0], dtype=dtype).expand(rows, 2), p.detach()[:, :2])
    assert (ends[:, 0] == 0).all() and (ends[:, 1] == 1).all()


@pytest.mark.parametrize("kind", MAPS)
@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])
def test_float32_inverse_is_accurate_to_rounding(kind, scale):
    """Backward error: forward(inverse(y)) reproduces y to a few units in the last place.

    Rounding x itself to float32 moves F(x) by up to q(x)·|x|·eps/2, so where the density q is
    large the bound is eps·(1 + q|x|); with moderate parameters (scale 0.5) plain ulps of 1.
    """
    tau = MAPS[kind]()
    n = 20000
    theta = _params(tau, n, scale, torch.float32)
    y = torch.rand(n, generator=torch.Generator().manual_seed(1))
    x, ladj_inv = tau.inverse(y, theta)
    y_again, ladj = tau.forward(x, theta)
    eps = torch.finfo(torch.float32).eps
    unit = eps if scale <= 0.5 else eps * (1 + ladj.exp() * x)
    ulps = ((y_again - y).abs() / unit).max()
    print(f"{kind}, scale {scale}: max backward error {float(ulps):.1f} ulps")
    assert ulps <= 4
    assert float((ladj_inv + ladj).abs().max()) < 1e-3


@pytest.mark.parametrize("kind", MAPS)
def test_the_density_integrates_to_one(kind):
    """exp(log|dy/dx|) is a density on [0, 1]: its integral (midpoint rule) is one, and the
    integral up to x is y(x)."""
    tau = MAPS[kind]()
    theta = _params(tau, 1, 2.0, torch.float64)
    cells = 2**16
    mids = (torch.arange(cells, dtype=torch.float64) + 0.5) / cells
    _, ladj = tau.forward(mids, theta.expand(cells, -1))
    density = ladj.exp()
    assert abs(float(density.mean()) - 1) < 1e-6
    ends = torch.arange(1, cells + 1, dtype=torch.float64) / cells
    y, _ = tau.forward(ends, theta.expand(cells, -1))
    assert float((density.cumsum(0) / cells - y).abs().max()) < 1e-6


def test_quadratic_density_is_continuous_across_bin_edges():
    tau = PiecewiseQuadraticMap(6)
    theta = _params(tau, 1, 1.5, torch.float64)
    interior = _edges(tau, theta, inverse=False)[0, :-1]
    h = 1e-9
    _, below = tau.forward(interior - h, theta.expand(len(interior), -1))
    _, above = tau.forward(interior + h, theta.expand(len(interior), -1))
    torch.testing.assert_close(below, above, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", MAPS)
def test_a_learnable_grid_fits_a_beta_density(kind):
    """A VEGAS-like grid, Elementwise(1, map), with a uniform base learns Beta(2, 5): its held-out
    NLL approaches the entropy of Beta(2, 5), −0.485 nats, well below the uniform's 0."""
    torch.manual_seed(0)
    tau = PiecewiseLinearMap(32) if kind == "linear" else PiecewiseQuadraticMap(8)
    flow = nfapps.Flow(Elementwise(1, tau), nfapps.BoxUniform(1))
    beta = torch.distributions.Beta(2.0, 5.0)
    train, held_out = beta.sample((4000, 1)), beta.sample((4000, 1))
    optimizer = torch.optim.Adam(flow.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        loss = -flow.log_prob(train).mean()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        nll = float(-flow.log_prob(held_out).mean())
        samples = flow.sample(4000, generator=torch.Generator().manual_seed(2))
    print(f"{kind}: held-out NLL {nll:.3f} (entropy {float(beta.entropy()):.3f})")
    assert nll < -0.4
    assert abs(float(samples.mean()) - 2 / 7) < 0.02 and ((samples >= 0) & (samples <= 1)).all()


def test_nsf_pre_map_puts_a_grid_in_front():
    flow = NSF(3, bins=4, transforms=2, hidden=(8,), bounded=True, pre_map=16)
    first = flow.transform[0]
    assert isinstance(first, Elementwise) and isinstance(first.elementwise, PiecewiseLinearMap)
    assert first.elementwise.bins == 16 and flow.config["kwargs"]["pre_map"] == 16
    assert not any(isinstance(t, Elementwise) for t in NSF(3, bounded=True, transforms=2, hidden=(8,)).transform)
    sampler = NSF(3, bins=4, transforms=2, hidden=(8,), bounded=True, pre_map=16, sampling="forward")
    assert isinstance(sampler.transform[0], Elementwise)  # the pre-map keeps its direction
    assert all(isinstance(t, Inverse) for t in sampler.transform.transforms[1:])
    with pytest.raises(ValueError, match="bounded"):
        NSF(3, pre_map=8)
    with pytest.raises(ValueError, match="pre_map"):
        NSF(3, bounded=True, pre_map=-1)


def test_argument_errors():
    with pytest.raises(ValueError, match="bins"):
        PiecewiseLinearMap(0)
    with pytest.raises(ValueError, match="min_density"):
        PiecewiseLinearMap(4, min_density=1.0)
    with pytest.raises(ValueError, match="min_width"):
        PiecewiseQuadraticMap(4, min_width=0.0)
    assert PiecewiseQuadraticMap(5).num_params == 11 and PiecewiseLinearMap(5).num_params == 5
    assert math.isclose(PiecewiseLinearMap(3, min_density=0.01).min_density, 0.01)


def test_shared_parameters_are_worked_once_and_give_the_same_bits():
    """Elementwise passes one θ per feature, broadcast over the points. Without gradients the
    per-bin work is done on the shared rows only; the values are bit-identical to the full
    computation (which training, with gradients, still does)."""
    from nfapps.transforms.elementwise import Elementwise

    torch.manual_seed(0)
    t = Elementwise(6, PiecewiseLinearMap(16)).double()
    with torch.no_grad():
        t.params.normal_(0, 2)
    x = torch.rand(3000, 6, dtype=torch.float64)
    for fn in (t.forward, t.inverse):
        with_grad = fn(x)
        with torch.no_grad():
            without = fn(x)
        assert with_grad[0].requires_grad and not without[0].requires_grad
        assert torch.equal(with_grad[0].detach(), without[0]) and torch.equal(with_grad[1].detach(), without[1])


@pytest.mark.parametrize("bins", [1, 2, 3, 8, 32, 33])
def test_bin_index_by_bisection_equals_counting_the_edges(bins):
    """Shared edges (a pre-map's, one row per feature) are searched by bisection; the bins must
    be exactly those of counting the edges at or below each value, ties on an edge included."""
    g = torch.Generator().manual_seed(bins)
    edges = upper_edges(floored_softmax(3 * torch.randn(1, 5, bins, generator=g), 1e-3))[..., :-1]
    values = torch.rand(300, 5, generator=g)
    values[0], values[1] = 0.0, 1.0
    if bins > 1:
        values[2] = edges[0, :, 0]  # exactly on the first interior edge
        values[3] = edges[0, :, -1]
    counted = (edges <= values.unsqueeze(-1)).sum(dim=-1)
    assert torch.equal(bin_index(edges, values), counted)
    per_value = edges.expand(300, 5, bins - 1)
    assert torch.equal(bin_index(per_value, values), counted)
