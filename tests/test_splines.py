"""Numerics of the rational-quadratic spline functions on their own."""

import pytest
import torch

from nfapps.transforms import splines
from nfapps.transforms.maps import SplineMap


def _params(n, d, k, scale, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = scale * torch.randn(n, d, k, generator=g, dtype=dtype)
    h = scale * torch.randn(n, d, k, generator=g, dtype=dtype)
    der = splines.derivatives_from(scale * torch.randn(n, d, k + 1, generator=g, dtype=dtype))
    return w, h, der


def test_zero_parameters_give_the_identity():
    spline = SplineMap(8, bound=3.0)
    x = torch.linspace(-10, 10, 101)[:, None]
    y, ladj = spline.forward(x, torch.zeros(101, 1, spline.num_params))
    torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ladj, torch.zeros_like(ladj), atol=1e-5, rtol=0)


@pytest.mark.parametrize("inverse", [False, True])
def test_finite_at_knots_in_tails_and_far_out(inverse):
    w, h, der = _params(1, 1, 8, 2.0, torch.float32)
    knots, _ = splines._knots(w, -5.0, 5.0, splines.DEFAULT_MIN_BIN)
    x = torch.cat([knots.flatten(), torch.tensor([-1e4, 1e4, -5.0, 5.0, 5.0000005, -4.9999995, 0.0, 37.0, -123.0])])
    x = x.clone().requires_grad_(True)
    n = x.shape[0]
    args = (x[:, None], w.expand(n, 1, 8), h.expand(n, 1, 8), der.expand(n, 1, 9))
    y, ladj = splines.unconstrained_rational_quadratic(*args, inverse=inverse, bound=5.0)
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
    (y.sum() + ladj.sum()).backward()
    assert torch.isfinite(x.grad).all()


def test_bounded_spline_keeps_the_unit_interval_and_its_ends():
    w, h, der = _params(3, 1, 6, 1.0, torch.float64)
    x = torch.tensor([[0.0], [1.0], [0.5]], dtype=torch.float64)
    y, ladj = splines.rational_quadratic(x, w, h, der)
    assert float(y[0]) == 0.0 and float(y[1]) == 1.0 and 0 < float(y[2]) < 1
    assert torch.isfinite(ladj).all()


@pytest.mark.parametrize("dtype,max_ulps", [(torch.float32, 16), (torch.float64, 16)])
def test_inverse_is_accurate_to_rounding_inside_the_bound(dtype, max_ulps):
    """Backward error: forward(inverse(y)) reproduces y to a few units in the last place."""
    n, d, k = 20000, 2, 8
    w, h, der = _params(n, d, k, 0.5, dtype)
    y = (torch.rand(n, d, generator=torch.Generator().manual_seed(1), dtype=dtype) * 2 - 1) * 4.9
    x, _ = splines.unconstrained_rational_quadratic(y, w, h, der, inverse=True, bound=5.0)
    y_again, _ = splines.unconstrained_rational_quadratic(x, w, h, der, bound=5.0)
    eps = torch.finfo(dtype).eps
    ulps = ((y_again - y).abs() / (eps * (1 + y.abs()))).max()
    print(f"{dtype}: max backward error {float(ulps):.1f} ulps")
    assert ulps <= max_ulps


def test_spline_map_argument_errors():
    with pytest.raises(ValueError, match="bins"):
        SplineMap(0)
    with pytest.raises(ValueError, match="tails"):
        SplineMap(4, tails="quadratic")
    with pytest.raises(ValueError, match="bound"):
        SplineMap(4, bound=-1)


def test_bin_softmax_is_the_softmax_over_the_bins_and_never_overflows():
    torch.manual_seed(0)
    u = torch.randn(2, 8, 5, 7, dtype=torch.float64) * 3
    u[0, :, 0, 0] += 1e3  # exp(1e3) overflows: only the shift by the maximum keeps it finite
    u[1, :, 1, 1] -= 1e3
    p = splines._softmax_first(u.permute(0, 1, 3, 2))  # a non-contiguous layout too
    expected = torch.softmax(u.permute(0, 1, 3, 2), dim=1)
    assert torch.isfinite(p).all()
    torch.testing.assert_close(p, expected, rtol=1e-13, atol=1e-300)
    torch.testing.assert_close(p.sum(dim=1), torch.ones_like(p[:, 0]), rtol=1e-14, atol=0)
