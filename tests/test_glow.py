"""Glow: the image transforms' contract (exact inverse, log-det = autograd log|det J|), ActNorm
initialisation, the builder, the image helpers, and a short training run on the 8×8 digits."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import perturb
from torch.autograd.functional import jacobian

from nfapps.glow import Glow
from nfapps.images import bits_per_dim, dequantize, load_digits
from nfapps.transforms.base import Compose, Transform
from nfapps.transforms.image import (
    ActNorm,
    AffineCouplingConv,
    InvertibleConv1x1,
    MultiScale,
    Reshape,
    Squeeze,
)



def logdet_autograd(fn, inputs: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    """log|det ∂fn/∂x| per sample, from the dense Jacobian of the flattened map."""
    values = []
    for i in range(inputs.shape[0]):
        ctx = None if context is None else context[i : i + 1]

        def flat(v: torch.Tensor, i: int = i, ctx=ctx) -> torch.Tensor:
            return fn(v.reshape(1, *inputs.shape[1:]), ctx)[0].reshape(-1)

        values.append(torch.linalg.slogdet(jacobian(flat, inputs[i].reshape(-1)))[1])
    return torch.stack(values)


def check_contract(t: Transform, x: torch.Tensor, context: torch.Tensor | None = None) -> None:
    """Exact round trip, opposite log-dets, and both log-dets equal to autograd's."""
    z, ladj = t(x, context)
    x_back, inv_ladj = t.inverse(z, context)
    assert ladj.shape == inv_ladj.shape == (x.shape[0],)
    torch.testing.assert_close(x_back, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(inv_ladj, -ladj, atol=1e-10, rtol=0)
    torch.testing.assert_close(ladj, logdet_autograd(t, x, context), atol=1e-8, rtol=0)
    torch.testing.assert_close(inv_ladj, logdet_autograd(t.inverse, z, context), atol=1e-8, rtol=0)


def coupling_level() -> MultiScale:
    """A two-level multi-scale transform on (2, 4, 4) images."""
    last = Compose(Squeeze(), AffineCouplingConv(16, hidden=8), Reshape((16, 1, 1), (16,)))
    pre = Compose(Squeeze(), ActNorm(8), InvertibleConv1x1(8), AffineCouplingConv(8, hidden=8))
    return MultiScale(pre, last, (8, 2, 2))


CASES = {
    "actnorm": lambda: (ActNorm(3), (3, 4, 4), 0),
    "conv1x1": lambda: (InvertibleConv1x1(3), (3, 4, 4), 0),
    "squeeze": lambda: (Squeeze(), (3, 4, 4), 0),
    "reshape": lambda: (Reshape((3, 4, 4), (12, 4)), (3, 4, 4), 0),
    "coupling": lambda: (AffineCouplingConv(4, hidden=8), (4, 4, 4), 0),
    "coupling-odd": lambda: (AffineCouplingConv(3, hidden=8), (3, 4, 4), 0),
    "coupling-context": lambda: (AffineCouplingConv(4, hidden=8, context=2), (4, 4, 4), 2),
    "multiscale": lambda: (coupling_level(), (2, 4, 4), 0),
    "glow": lambda: (Glow((2, 4, 4), levels=2, steps=2, hidden=8).transform, (2, 4, 4), 0),
    "glow-center-context": lambda: (
        Glow((1, 4, 4), levels=1, steps=2, hidden=8, preprocess="center", context=3).transform,
        (1, 4, 4),
        3,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_transform_contract(name: str) -> None:
    t, shape, context_features = CASES[name]()
    t = t.double()
    x = torch.rand(2, *shape, dtype=torch.float64)  # in [0, 1), the domain of Glow's logit
    context = torch.randn(2, context_features, dtype=torch.float64) if context_features else None
    t(x, context)  # data-dependent ActNorm initialisation, before the parameters are perturbed
    perturb(t, 0.2)  # zero-initialised conditioners and identity ActNorms become non-trivial
    check_contract(t, x, context)


def test_actnorm_data_dependent_init_and_state_dict() -> None:
    x = torch.randn(64, 3, 4, 4) * torch.tensor([0.5, 2.0, 4.0])[:, None, None] + torch.tensor([-1.0, 3.0, 0.0])[:, None, None]
    layer = ActNorm(3)
    y, _ = layer(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    assert bool(layer.initialized)

    again, _ = layer(x + 10.0)  # initialised once only
    torch.testing.assert_close(again, y + 10.0 * layer.log_scale.detach().exp()[:, None, None])

    restored = ActNorm(3)
    restored.load_state_dict(layer.state_dict())
    assert bool(restored.initialized)
    torch.testing.assert_close(restored(x)[0], y)


def test_actnorm_inverse_first_stays_identity() -> None:
    layer = ActNorm(2)
    z = torch.randn(4, 2, 2, 2)
    x, ladj = layer.inverse(z)
    assert bool(layer.initialized)
    torch.testing.assert_close(x, z)
    torch.testing.assert_close(layer(z)[0], z)  # no initialisation on the later forward
    assert torch.all(ladj == 0)


def test_conv1x1_starts_orthogonal() -> None:
    layer = InvertibleConv1x1(6)
    w = layer.weight()
    torch.testing.assert_close(w @ w.T, torch.eye(6), atol=1e-5, rtol=0)
    assert abs(float(layer.log_abs_diag.detach().sum())) < 1e-5


def test_squeeze_layout_and_odd_size() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y, _ = Squeeze()(x)
    assert y.shape == (1, 4, 2, 2)
    assert y[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]  # channel 2i + j ← pixel (i, j)
    with pytest.raises(ValueError, match="even height and width"):
        Squeeze()(torch.zeros(1, 1, 3, 4))


def test_multiscale_latent_ordering() -> None:
    x = torch.randn(2, 4, 2, 2)
    level = MultiScale(Compose(), Reshape((2, 2, 2), (8,)), (4, 2, 2))
    z, _ = level(x)
    torch.testing.assert_close(z, torch.cat([x[:, :2].flatten(1), x[:, 2:].flatten(1)], dim=1))


def test_glow_builder_flow() -> None:
    flow = Glow((1, 8, 8), levels=3, steps=1, hidden=8).double()
    assert flow.event_shape == (1, 8, 8)
    assert flow.config["builder"] == "Glow"
    assert {k: flow.config["kwargs"][k] for k in ("shape", "levels", "steps", "hidden")} == {
        "shape": [1, 8, 8], "levels": 3, "steps": 1, "hidden": 8}
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    flow.log_prob(x)
    perturb(flow, 0.1)
    log_prob = flow.log_prob(x)
    assert log_prob.shape == (5,) and torch.isfinite(log_prob).all()
    rebuilt = Glow(**flow.config["kwargs"]).double()  # what nfapps.load does: rebuild, then load
    rebuilt.load_state_dict(flow.state_dict())
    torch.testing.assert_close(rebuilt.log_prob(x), log_prob, atol=1e-10, rtol=0)
    (-log_prob.mean()).backward()
    for name, p in flow.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name

    with torch.no_grad():
        samples, sample_log_prob = flow.sample_and_log_prob(4)
        assert samples.shape == (4, 1, 8, 8)
        margin = 0.05 / 0.9  # the inverse logit with margin α lands in (−α/(1−2α), 1 + α/(1−2α))
        assert ((samples > -margin) & (samples < 1 + margin)).all()
        torch.testing.assert_close(sample_log_prob, flow.log_prob(samples), atol=1e-8, rtol=0)


def test_glow_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="divisible by 2\\^2"):
        Glow((1, 6, 8), levels=2)
    with pytest.raises(ValueError, match="\\(C, H, W\\)"):
        Glow((8, 8))
    with pytest.raises(ValueError, match="preprocess"):
        Glow((1, 4, 4), levels=1, preprocess="sigmoid")


def test_dequantize_and_bits_per_dim() -> None:
    x = torch.arange(256, dtype=torch.uint8).reshape(4, 1, 8, 8)
    u = dequantize(x, generator=torch.Generator().manual_seed(0))
    assert u.dtype == torch.get_default_dtype() and (u >= 0).all() and (u < 1).all()
    assert torch.equal((u * 256).floor().to(torch.uint8), x)  # each pixel stays in its own bin
    with pytest.raises(ValueError, match="integer pixels"):
        dequantize(x.float())
    with pytest.raises(ValueError, match="0..15"):
        dequantize(x, bits=4)
    # the uniform density on [0, 1)^D (log p = 0) costs exactly `bits` bits per dimension
    assert float(bits_per_dim(torch.zeros(3), 64)[0]) == pytest.approx(8.0)
    assert float(bits_per_dim(64 * torch.log(torch.tensor(2.0)), 64)) == pytest.approx(7.0)


def test_load_digits() -> None:
    images, labels = load_digits()
    train, _ = load_digits("train")
    test, test_labels = load_digits("test")
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.uint8
    assert int(images.max()) == 255 and int(images.min()) == 0
    assert len(train) + len(test) == 1797 and len(test) == 359 and len(test_labels) == 359
    assert set(torch.unique(labels).tolist()) == set(range(10))


def test_glow_learns_digits() -> None:
    """A few hundred Adam steps beat the 8-bit uniform baseline (8 bits/dim) on held-out digits."""
    generator = torch.Generator().manual_seed(1)
    train, _ = load_digits("train")
    test, _ = load_digits("test")
    flow = Glow((1, 8, 8), levels=2, steps=2, hidden=32)
    with torch.no_grad():
        flow.log_prob(dequantize(train[:512], generator=generator))  # ActNorm initialisation
    optimizer = torch.optim.Adam(flow.parameters(), lr=2e-3)
    start = time.perf_counter()
    for _ in range(400):
        batch = train[torch.randint(len(train), (128,), generator=generator)]
        loss = -flow.log_prob(dequantize(batch, generator=generator)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        log_prob = flow.log_prob(dequantize(test, generator=generator))
    bpd = float(bits_per_dim(log_prob.mean(), 64))
    print(f"Glow on 8×8 digits: held-out {bpd:.3f} bits/dim after 400 steps in {seconds:.1f} s")
    assert bpd < 6.5
