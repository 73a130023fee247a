"""The Flow API: shapes, one-pass sampling with log-densities, gradients, and bad-input errors."""

import math

import numpy as np
import pytest
import torch
from conftest import perturb

import nfapps
from nfapps.builders import MAF, NSF, RealNVP

BUILDERS = {
    "RealNVP": lambda ctx: RealNVP(3, ctx, transforms=2, hidden=(16,)),
    "NSF": lambda ctx: NSF(3, ctx, bins=4, transforms=2, hidden=(16,)),
    "NSF-bounded": lambda ctx: NSF(3, ctx, bins=4, transforms=2, hidden=(16,), bounded=True),
    "NSF-sampling-forward": lambda ctx: NSF(3, ctx, bins=4, transforms=3, hidden=(16,), bounded=True, mask="antichain",
                                            pre_map=8, sampling="forward"),
    "MAF": lambda ctx: MAF(3, ctx, transforms=2, hidden=(16,)),
    "MAF-spline": lambda ctx: MAF(3, ctx, transforms=2, hidden=(16,), elementwise="spline", bins=4),
}


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("ctx", [0, 2])
def test_sampling_shapes_and_one_pass_log_prob(name, ctx):
    flow = BUILDERS[name](ctx).double()
    perturb(flow, 0.05)
    context = torch.randn(4, ctx, dtype=torch.float64) if ctx else None
    x, log_prob = flow.sample_and_log_prob(5, context)
    expected_shape = (4, 5, 3) if ctx else (5, 3)
    assert x.shape == expected_shape and log_prob.shape == expected_shape[:-1]
    flat_ctx = context.repeat_interleave(5, dim=0) if ctx else None
    again = flow.log_prob(x.reshape(-1, 3), flat_ctx).reshape(log_prob.shape)
    torch.testing.assert_close(again, log_prob, atol=1e-9, rtol=1e-9)
    assert flow.sample(7, context).shape == ((4, 7, 3) if ctx else (7, 3))


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("ctx", [0, 2])
def test_to_base_inverts_from_base(name, ctx):
    flow = BUILDERS[name](ctx).double()
    perturb(flow, 0.05)
    z = flow.base.sample(6)
    context = torch.randn(6, ctx, dtype=torch.float64) if ctx else None
    x, _ = flow.from_base(z, context)
    torch.testing.assert_close(flow.to_base(x, context), z, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", BUILDERS)
def test_gradients_reach_every_parameter(name):
    flow = BUILDERS[name](2)
    perturb(flow, 0.05)
    x = torch.rand(16, 3) if "bounded" in name else torch.randn(16, 3)
    flow.log_prob(x, torch.randn(16, 2)).mean().backward()
    missing = [n for n, p in flow.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_bounded_flow_stays_in_the_unit_cube_and_is_uniform_at_init():
    flow = NSF(4, bounded=True, transforms=2, hidden=(8,))
    x, log_prob = flow.sample_and_log_prob(1000)
    assert ((x >= 0) & (x <= 1)).all()
    torch.testing.assert_close(log_prob, torch.zeros(1000), atol=1e-5, rtol=0)


def test_box_uniform_density_inside_at_the_ends_and_outside():
    box = nfapps.BoxUniform(3, low=-1.0, high=1.0)
    eps = torch.finfo(torch.float32).eps
    z = torch.tensor([[0.0, 0.5, -0.5], [1.0, -1.0, 1.0], [1 + 4 * eps, -1 - 4 * eps, 0.0],  # ends, rounding slack
                      [1.01, 0.0, 0.0], [0.0, 0.0, -1.5], [float("nan"), 0.0, 0.0]])
    expected = torch.tensor([-3 * math.log(2)] * 3 + [-math.inf] * 3)
    assert torch.equal(box.log_prob(z), expected)


def test_numpy_input_is_accepted():
    flow = RealNVP(2, transforms=2, hidden=(8,))
    assert flow.log_prob(np.zeros((3, 2))).shape == (3,)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda f: f.log_prob(torch.randn(4, 5), torch.randn(4, 2)), "5 features"),
        (lambda f: f.log_prob(torch.randn(4), torch.randn(4, 2)), "expects shape"),
        (lambda f: f.log_prob(torch.tensor([[0.0, float("nan"), 1.0]]), torch.randn(1, 2)), "NaN or inf .*row 0"),
        (lambda f: f.log_prob(torch.tensor([[0.0, 1, 1], [0, float("inf"), 1]]), torch.randn(2, 2)), "row 1"),
        (lambda f: f.log_prob(torch.randn(4, 3)), "conditional: pass a context of shape \\(batch, 2\\)"),
        (lambda f: f.log_prob(torch.randn(4, 3), torch.randn(4, 3)), "context has shape \\(4, 3\\).*\\(batch, 2\\)"),
        (lambda f: f.log_prob(torch.randn(4, 3), torch.randn(5, 2)), "5 rows but the input has 4"),
        (lambda f: f.log_prob(torch.randn(4, 3), torch.full((4, 2), float("nan"))), "context contains NaN"),
        (lambda f: f.log_prob(torch.randn(0, 3), torch.randn(0, 2)), "empty"),
        (lambda f: f.sample(0, torch.randn(1, 2)), "positive integer"),
        (lambda f: f.sample(3), "conditional"),
        (lambda f: f.log_prob("abc", torch.randn(1, 2)), "numeric array"),
    ],
)
def test_bad_input_gives_one_clear_value_error(call, message):
    flow = MAF(3, context=2, transforms=1, hidden=(8,))
    with pytest.raises(ValueError, match=message):
        call(flow)


def test_context_given_to_an_unconditional_flow():
    with pytest.raises(ValueError, match="unconditional"):
        RealNVP(3, transforms=1, hidden=(8,)).log_prob(torch.randn(2, 3), torch.randn(2, 1))


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda: RealNVP(1), "at least 2 features"),
        (lambda: RealNVP(0), "features must be an integer"),
        (lambda: NSF(3, transforms=0), "transforms must be"),
        (lambda: MAF(3, elementwise="cubic"), "elementwise must be"),
        (lambda: MAF(3, bounded=True), "bounded=True needs elementwise='spline'"),
        (lambda: RealNVP(4, mask="diagonal"), "mask must be"),
        (lambda: NSF(4, sampling="backward"), "sampling must be"),
    ],
)
def test_builder_argument_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_one_dimensional_flows():
    for flow in (MAF(1, transforms=2), NSF(1, autoregressive=True, transforms=2), MAF(1, context=1, transforms=1)):
        perturb(flow, 0.05)
        ctx = torch.randn(6, 1) if flow.context_features else None
        x, lp = flow.sample_and_log_prob(6) if ctx is None else flow.sample_and_log_prob(1, ctx)
        assert torch.isfinite(lp).all()


def test_builders_record_their_arguments_and_defaults():
    flow = NSF(3, context=1, bins=np.int64(5), hidden=(16, 16), bound=np.float32(4.0))
    kwargs = flow.config["kwargs"]
    assert flow.config["builder"] == "NSF"
    assert {k: kwargs[k] for k in ("features", "context", "bins", "hidden", "bound")} == {
        "features": 3, "context": 1, "bins": 5, "hidden": [16, 16], "bound": 4.0}
    assert type(kwargs["bins"]) is int and type(kwargs["bound"]) is float
    assert kwargs["transforms"] == 4 and kwargs["tails"] == "linear"  # defaults are recorded too
