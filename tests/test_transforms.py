"""The transform contract, applied to every vector transform and builder.

For random non-trivial parameters, in float64: inverse(forward(x)) = x, the forward and
inverse log-dets are negatives, and logabsdet equals log|det J| of the autograd Jacobian
for every sample (conditional transforms included).
"""

import math

import pytest
import scipy.stats
import torch
from conftest import perturb
from torch.autograd.functional import jacobian

import nfapps
from nfapps.builders import MAF, NSF, RealNVP
from nfapps.transforms.autoregressive import MaskedAutoregressive
from nfapps.transforms.base import Compose, Inverse
from nfapps.transforms.coupling import Coupling, antichain_layers, coupling_mask
from nfapps.transforms.elementwise import Affine, Elementwise, Logit, Sigmoid
from nfapps.transforms.maps import AffineMap, SplineMap
from nfapps.transforms.permutations import RandomPermutation, ReversePermutation
from nfapps.transforms.grid import AdaptiveGrid
from nfapps.transforms.piecewise import PiecewiseLinearMap, PiecewiseQuadraticMap

D, C = 5, 3  # features, context width


def _adapted_grid():
    """A VEGAS grid refined twice on a peak at 0.3 (its edges are no longer evenly spaced)."""
    grid = AdaptiveGrid(D, bins=6)
    x = torch.rand(4000, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for _ in range(2):
        grid.accumulate(x, torch.exp(-((x - 0.3) ** 2).sum(dim=1) / 0.1))
        grid.refine()
    return grid


def _cases():
    """(name, factory, context width, input domain) for every vector transform."""
    return [
        ("coupling-affine-halves", lambda: Coupling(coupling_mask(D), AffineMap(), hidden=(16, 16)), 0, "real"),
        ("coupling-affine-alternating-ctx", lambda: Coupling(coupling_mask(D, "alternating", True), AffineMap(), C, (16,)), C, "real"),
        ("coupling-spline-linear-tails", lambda: Coupling(coupling_mask(D), SplineMap(6, bound=2.0), hidden=(16,)), 0, "real"),
        ("coupling-spline-identity-ctx", lambda: Coupling(coupling_mask(D, flip=True), SplineMap(4, 2.0, "identity"), C, (16,)), C, "real"),
        ("coupling-spline-bounded", lambda: Coupling(coupling_mask(D), SplineMap(5, bounded=True), hidden=(16,)), 0, "unit"),
        ("autoregressive-affine-ctx", lambda: MaskedAutoregressive(D, AffineMap(), C, (24, 24)), C, "real"),
        ("autoregressive-spline-order", lambda: MaskedAutoregressive(D, SplineMap(4, 2.0), 0, (24,), order=[3, 1, 4, 0, 2]), 0, "real"),
        ("autoregressive-spline-bounded-ctx", lambda: MaskedAutoregressive(D, SplineMap(4, bounded=True), C, (24,)), C, "unit"),
        ("elementwise-spline", lambda: Elementwise(D, SplineMap(6, 2.0)), 0, "real"),
        ("coupling-piecewise-linear", lambda: Coupling(coupling_mask(D), PiecewiseLinearMap(6), hidden=(16,)), 0, "unit"),
        ("coupling-piecewise-quadratic-alternating-ctx", lambda: Coupling(coupling_mask(D, "alternating", True), PiecewiseQuadraticMap(5), C, (16,)), C, "unit"),
        ("autoregressive-piecewise-linear-ctx", lambda: MaskedAutoregressive(D, PiecewiseLinearMap(6), C, (24,)), C, "unit"),
        ("autoregressive-piecewise-quadratic-ctx", lambda: MaskedAutoregressive(D, PiecewiseQuadraticMap(4), C, (24,), order=[3, 1, 4, 0, 2]), C, "unit"),
        ("elementwise-piecewise-linear", lambda: Elementwise(D, PiecewiseLinearMap(7)), 0, "unit"),
        ("elementwise-piecewise-quadratic-ctx", lambda: Elementwise(D, PiecewiseQuadraticMap(5), C), C, "unit"),
        ("adaptive-grid", _adapted_grid, 0, "unit"),
        ("elementwise-affine-ctx", lambda: Elementwise(D, AffineMap(), C), C, "real"),
        ("reverse", lambda: ReversePermutation(D), 0, "real"),
        ("random-permutation", lambda: RandomPermutation(D, seed=3), 0, "real"),
        ("affine", lambda: Affine(torch.linspace(-1, 1, D), torch.linspace(0.5, -2, D)), 0, "real"),
        ("logit", lambda: Logit(1e-3), 0, "unit"),
        ("sigmoid", lambda: Sigmoid(1e-3), 0, "real"),
        ("compose-inverse", lambda: Compose(Inverse(Coupling(coupling_mask(D), AffineMap(), hidden=(8,))), ReversePermutation(D)), 0, "real"),
        ("RealNVP", lambda: RealNVP(D, C, transforms=3, hidden=(16,)).transform, C, "real"),
        ("NSF", lambda: NSF(D, C, bins=4, transforms=2, hidden=(16,), bound=2.0).transform, C, "real"),
        ("NSF-ar-bounded", lambda: NSF(D, bins=4, transforms=2, hidden=(16,), bounded=True, autoregressive=True).transform, 0, "unit"),
        ("NSF-bounded-pre-map-ctx", lambda: NSF(D, C, bins=4, transforms=2, hidden=(16,), bounded=True, pre_map=6).transform, C, "unit"),
        ("NSF-sampling-forward-antichain", lambda: NSF(D, C, bins=4, transforms=4, hidden=(16,), bounded=True, pre_map=6,
                                                       mask="antichain", sampling="forward").transform, C, "unit"),
        ("MAF-spline", lambda: MAF(D, C, transforms=2, hidden=(16,), elementwise="spline", bins=4).transform, C, "real"),
    ]


CASES = _cases()


def _inputs(domain, n=4, seed=0, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    if domain == "unit":
        return 0.02 + 0.96 * torch.rand(n, D, generator=g, dtype=torch.float64)
    return scale * torch.randn(n, D, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("name,factory,context,domain", CASES, ids=[c[0] for c in CASES])
def test_transform_contract(name, factory, context, domain):
    t = factory().double()
    perturb(t, 0.1)
    x = _inputs(domain)
    c = torch.randn(x.shape[0], context, dtype=torch.float64) if context else None

    z, ladj = (v.detach() for v in t(x, c))
    assert z.shape == x.shape and ladj.shape == (x.shape[0],)
    x_back, ladj_inv = t.inverse(z, c)
    torch.testing.assert_close(x_back, x, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(ladj_inv, -ladj, atol=1e-10, rtol=1e-10)

    for i in range(x.shape[0]):
        ci = None if c is None else c[i : i + 1]
        J = jacobian(lambda xi: t(xi[None], ci)[0][0], x[i])
        sign, logdet = torch.linalg.slogdet(J)
        assert sign != 0
        assert abs(float(logdet) - float(ladj[i])) < 1e-8, (name, float(logdet), float(ladj[i]))

    if "permutation" not in name and name != "reverse":
        assert (z - x).abs().max() > 1e-2, f"{name} is (nearly) the identity: the test would prove nothing"


@pytest.mark.parametrize("name,factory,context,domain", [c for c in CASES if c[2]], ids=[c[0] for c in CASES if c[2]])
def test_conditional_transforms_depend_on_context_in_every_feature(name, factory, context, domain):
    t = factory().double()
    perturb(t, 0.1)
    x = _inputs(domain, n=1, scale=0.5)  # inside the spline box: identity tails ignore the context
    c = torch.randn(1, context, dtype=torch.float64)
    J = jacobian(lambda ci: t(x, ci)[0][0], c)
    moved = J.abs().sum(dim=1) > 0
    if name.startswith("coupling"):
        moved = moved[~coupling_mask(D, *(("alternating", True) if "alternating" in name else ("halves", True)))]
    assert moved.all(), f"{name}: some transformed features ignore the context"


def test_lecture_example_is_exactly_normal_5_2():
    """z = 0.5 x − 2.5 with a N(0, 1) base is N(5, 2)."""
    flow = nfapps.Flow(Affine(shift=-2.5, scale=0.5), nfapps.StandardNormal(1)).double()
    x = torch.linspace(-5, 15, 41, dtype=torch.float64)[:, None]
    expected = scipy.stats.norm(5, 2).logpdf(x[:, 0].numpy())
    torch.testing.assert_close(flow.log_prob(x), torch.as_tensor(expected), atol=1e-12, rtol=0)
    samples = flow.sample(200_000, generator=torch.Generator().manual_seed(0))
    assert abs(float(samples.mean()) - 5) < 0.02 and abs(float(samples.std()) - 2) < 0.02


def test_permutation_rejects_non_permutations():
    with pytest.raises(ValueError, match="not a permutation"):
        nfapps.transforms.permutations.Permutation([0, 0, 1])


def test_logit_round_trip_at_the_edges_is_finite():
    t = Logit(1e-6)
    x = torch.tensor([[0.0, 1.0, 0.5, 1e-9, 1 - 1e-7]])
    z, ladj = t(x)
    assert torch.isfinite(z).all() and torch.isfinite(ladj).all()
    back, _ = t.inverse(z)
    torch.testing.assert_close(back, x, atol=1e-6, rtol=0)
    assert torch.isfinite(Sigmoid()(torch.tensor([[1e4, -1e4, 0.0, 50.0, -50.0]]))[1]).all()


@pytest.mark.parametrize("features", [2, 3, 5, 8, 16, 17])
def test_binary_masks_let_every_feature_condition_every_other(features):
    layers = 2 * max(1, math.ceil(math.log2(features)))
    conditions = torch.zeros(features, features, dtype=torch.bool)  # [i, j]: i conditions j in some layer
    for layer in range(layers):
        mask = coupling_mask(features, "binary", flip=layer % 2 == 1, layer=layer)
        assert mask.any() and not mask.all()
        conditions |= mask[:, None] & ~mask[None, :]
    assert (conditions | torch.eye(features, dtype=torch.bool)).all()


@pytest.mark.parametrize("features", [2, 3, 4, 5, 8, 16, 17, 33, 96])
def test_antichain_masks_cover_every_pair_in_the_fewest_layers(features):
    layers = antichain_layers(features)
    assert math.comb(layers, layers // 2) >= features and (layers == 2 or math.comb(layers - 1, (layers - 1) // 2) < features)
    for total in (layers, layers + 2):
        conditions = torch.zeros(features, features, dtype=torch.bool)
        transformed = []
        for layer in range(total):
            mask = coupling_mask(features, "antichain", layer=layer, layers=total)
            assert mask.any() and not mask.all()
            conditions |= mask[:, None] & ~mask[None, :]
            transformed.append(int((~mask).sum()))
        assert (conditions | torch.eye(features, dtype=torch.bool)).all()
        assert max(transformed) - min(transformed) <= 1 + features // 16  # balanced layers
    assert [antichain_layers(d) for d in (2, 4, 8, 16, 32, 96)] == [2, 4, 5, 6, 7, 9]


def test_antichain_masks_with_too_few_layers_still_split_every_layer():
    for layer in range(3):
        mask = coupling_mask(17, "antichain", layer=layer, layers=3)
        assert mask.any() and not mask.all()
    with pytest.raises(ValueError, match="total number of layers"):
        coupling_mask(4, "antichain")


def test_binary_mask_coupling_flow_is_exact():
    t = RealNVP(D, transforms=4, hidden=(8,), mask="binary").transform.double()
    perturb(t, 0.1)
    x = _inputs("real")
    z, ladj = (v.detach() for v in t(x))
    J = jacobian(lambda xi: t(xi[None])[0][0], x[0])
    assert abs(float(torch.linalg.slogdet(J)[1]) - float(ladj[0])) < 1e-8
    torch.testing.assert_close(t.inverse(z)[0], x)


@pytest.mark.parametrize("inverse", [False, True])
def test_spline_coupling_reads_each_features_parameters_from_its_own_block_of_outputs(inverse):
    """θ of transformed feature j is the conditioner's outputs j·P … (j+1)·P − 1, however the
    coupling lays them out for speed: the same as the map applied to the plain output."""
    from nfapps.transforms.coupling import Coupling
    from nfapps.transforms.maps import SplineMap

    torch.manual_seed(0)
    spline = SplineMap(5, bounded=True)
    coupling = Coupling(torch.tensor([True, False, True, False, False]), spline, hidden=(8,))
    perturb(coupling, 0.5)
    x = torch.rand(64, 5, dtype=torch.float64)
    coupling.double()
    z, ladj = (coupling.inverse if inverse else coupling.forward)(x)
    theta = coupling.conditioner(x[:, coupling.conditioning]).view(64, 3, spline.num_params)
    expected, expected_ladj = (spline.inverse if inverse else spline.forward)(x[:, coupling.transformed], theta)
    torch.testing.assert_close(z[:, coupling.transformed], expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(z[:, coupling.conditioning], x[:, coupling.conditioning], rtol=0, atol=0)
    torch.testing.assert_close(ladj, expected_ladj.sum(dim=1), rtol=1e-12, atol=1e-12)
