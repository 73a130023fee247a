"""The flow image codec: exact flow, real bitstreams, clear errors, training, resume, re-compression."""

import json
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch

from nfapps.atomic import FlowFileError
from nfapps.cli import main
from nfapps.codec import BitstreamError, CodecConfig, FlowCodec, ImageCodec, ImageError, TrainingSettings, psnr, train_codec
from nfapps.codec import backend
from nfapps.codec.baseline import BaselineConfig, LearnedBaseline
from nfapps.codec.codec import DEFAULT_REFINE
from nfapps.codec.images import read_image, to_pixels, to_tensor, write_image
from nfapps.codec.latent_flow import LatentFlow
from nfapps.codec.photos import EVALUATION, TRAINING, load_photo
from nfapps.codec.refine import refine_latents
from nfapps.codec.train import patch_batch

from conftest import perturb

TINY = CodecConfig(levels=2, steps=2, hidden=16, entropy_model="factorized", initial_gain=1.0)
FAST = TrainingSettings(lmbda=0.01, steps=150, batch=4, patch=32, lr=5e-3, seed=0)


@pytest.fixture(scope="module")
def photos():
    return [load_photo(n)[:160, :160] for n in ("china", "flower", "immunohistochemistry")]


@pytest.fixture(scope="module")
def trained(photos):
    torch.manual_seed(0)
    model, history = train_codec(photos, TINY, FAST, device="cpu", progress=False)
    return ImageCodec(model), history


@pytest.fixture(scope="module")
def held_out():
    return load_photo("astronaut")[150:198, 200:262]  # 48 × 62: padded to 48 × 64 and cropped back


def test_compressai_imports_with_or_without_a_working_torchvision():
    compressai = backend.load_compressai()
    assert "ans" in compressai.available_entropy_coders()
    # whether the real torchvision loads, asked of a fresh interpreter (this one may hold the stand-in)
    real = subprocess.run([sys.executable, "-c", "import torchvision.transforms"], capture_output=True).returncode == 0
    assert backend.uses_stand_in() == (not real)


@pytest.mark.parametrize("levels", [1, 3])
def test_flow_is_exactly_invertible_before_quantization(levels):
    flow = LatentFlow(3, levels, steps=2, hidden=8)
    x = torch.rand(2, 3, 24, 40) - 0.5
    flow(x)  # ActNorm initialisation
    perturb(flow, 0.05)
    latents = flow(x)
    assert sum(y[0].numel() for y in latents) == x[0].numel()  # a bijection of ℝ^(C×H×W): nothing dropped
    assert [tuple(y.shape[1:]) for y in latents] == [tuple(s) for s in flow.latent_shapes(24, 40)]
    assert torch.allclose(flow.inverse(latents), x, atol=2e-5)


@pytest.mark.parametrize("entropy_model", ["factorized", "hyperprior", "conditional"])
def test_bitstream_round_trip_equals_the_models_reconstruction(entropy_model, held_out, tmp_path):
    config = CodecConfig(levels=2, steps=1, hidden=8, entropy_model=entropy_model, hyper_channels=8, initial_gain=4.0)
    model = FlowCodec(config)
    model(to_tensor(held_out, model.multiple))
    perturb(model.flow, 0.02)
    codec = ImageCodec(model)
    for pixels in (held_out, held_out[:37, :53, 1]):  # RGB, and grayscale of an odd size
        data = codec.encode(pixels)
        decoded = codec.decode(data)
        assert decoded.shape == pixels.shape and decoded.dtype == np.uint8
        np.testing.assert_array_equal(decoded, codec.reconstruct(pixels))
    write_image(tmp_path / "in.png", held_out)
    report = codec.compress_file(tmp_path / "in.png", tmp_path / "out.nfic")
    size = (tmp_path / "out.nfic").stat().st_size
    assert report["bytes"] == size and report["bpp"] == pytest.approx(8 * size / (48 * 62))
    np.testing.assert_array_equal(codec.decompress_file(tmp_path / "out.nfic", tmp_path / "back.png"), codec.reconstruct(held_out))
    np.testing.assert_array_equal(read_image(tmp_path / "back.png"), codec.reconstruct(held_out))


def test_the_split_prior_sees_what_the_decoder_has_decoded():
    """The conditional entropy model of level l is given the flow's kept half at level l: the
    inverse of the coarser latents, which the decoder holds before it decodes level l."""
    model = FlowCodec(CodecConfig(levels=3, steps=1, hidden=8, entropy_model="conditional", initial_gain=3.0))
    x = torch.rand(1, 3, 32, 24) - 0.5
    model(x)
    perturb(model.flow, 0.05)
    kept, h = [], x
    for level, block in enumerate(model.flow.blocks[:-1]):  # the forward pass, by hand
        h = block(model.flow.squeeze(h)[0])[0][:, : model.flow.latent_channels[level]]
        kept.append(h)
    analysed, seen = model.analysis(x), {}

    def code(level, context):
        seen[level] = context
        return analysed[level]

    _, image = model._descend(code, image=True)
    assert seen[2] is None  # the coarsest level: an EntropyBottleneck, no context
    for level in (0, 1):
        assert torch.allclose(seen[level], kept[level], atol=2e-5)
    assert torch.allclose(image, x, atol=2e-5)
    # and what it predicts changes the rate: the quantized latents sit on a grid around its means
    latents = model.quantized_latents(x)
    means, _ = model.entropy[0].prior(seen[0])
    assert torch.allclose(latents[0] - means, torch.round(latents[0] - means), atol=1e-4)


@pytest.mark.parametrize("architecture", ["bmshj2018-factorized", "bmshj2018-hyperprior"])
def test_compressai_baselines_train_and_code_through_the_same_files(architecture, photos, tmp_path):
    config = BaselineConfig(architecture, n=8, m=8)
    settings = TrainingSettings(lmbda=0.01, steps=30, batch=2, patch=64, lr=5e-3, seed=0)
    model, _ = train_codec(photos, config, settings, device="cpu", progress=False)
    torch.manual_seed(settings.seed)
    untrained = LearnedBaseline(config).eval()  # train_codec's initialisation
    batch = patch_batch(photos, 4, 64, seed=9, step=0)

    def loss(m):
        with torch.no_grad():
            out = m(batch)
        return float(out["bpp"].mean() + settings.lmbda * 255**2 * (out["x_hat"] - batch).square().mean())

    assert loss(model) < 0.7 * loss(untrained), (loss(model), loss(untrained))
    codec = ImageCodec(model)
    assert codec.settle == 0  # an autoencoder's decoder is not its encoder's inverse: nothing to settle
    pixels = photos[0][:70, :90]
    data = codec.encode(pixels)
    np.testing.assert_array_equal(codec.decode(data), codec.reconstruct(pixels))
    streams = 8 * (len(data) - 24 - 4 * model.streams_per_image - 4)
    assert abs(streams / (codec.estimated_bpp(data) * 70 * 90) - 1) < 0.2
    codec.save(tmp_path / "baseline.nfc")
    loaded = ImageCodec.load(tmp_path / "baseline.nfc")
    assert isinstance(loaded.model, LearnedBaseline) and loaded.identifier == codec.identifier
    np.testing.assert_array_equal(loaded.decode(data), codec.decode(data))
    with pytest.raises(BitstreamError, match="another codec model"):
        ImageCodec(FlowCodec(TINY)).decode(data)


def test_the_quantization_step_knob_rescales_the_density_exactly(trained, held_out):
    codec, _ = trained
    model = codec.model
    v = torch.linspace(-4, 4, 17)[None, None].repeat(model.entropy[0].bottleneck.channels, 1, 1)
    sizes, qualities = [], []
    for step in (0.6, 1.5, 3.0):
        knob = model.with_quantization_step(step)
        # the rescaled density p'(v) = step · p(step · v): the same CDF at step · v
        rescaled = knob.entropy[0].bottleneck._logits_cumulative(v, stop_gradient=True)
        original = model.entropy[0].bottleneck._logits_cumulative(step * v, stop_gradient=True)
        assert torch.allclose(rescaled, original, atol=1e-4)
        knob_codec = ImageCodec(knob)
        data = knob_codec.encode(held_out)
        np.testing.assert_array_equal(knob_codec.decode(data), knob_codec.reconstruct(held_out))
        sizes.append(len(data))
        qualities.append(psnr(held_out, knob_codec.decode(data)))
        stream_bits = 8 * (len(data) - 24 - 4 * knob.streams_per_image - 4)  # the file less its header and CRC
        assert abs(stream_bits / (knob_codec.estimated_bpp(data) * held_out.size / 3) - 1) < 0.15
    assert sizes[0] > sizes[1] > sizes[2] and qualities[0] > qualities[1] > qualities[2]
    with pytest.raises(ValueError, match="positive"):
        model.with_quantization_step(0.0)
    with pytest.raises(ValueError, match="factorized"):
        FlowCodec(CodecConfig(levels=2, steps=1, hidden=8, entropy_model="hyperprior")).with_quantization_step(2.0)


def test_training_lowers_the_loss_and_beats_pixel_quantization(trained, held_out):
    codec, history = trained
    start = np.mean([h["loss"] for h in history[:5]])
    end = np.mean([h["loss"] for h in history[-5:]])
    assert end < 0.7 * start
    data = codec.encode(held_out)
    bpp = 8 * len(data) / (held_out.shape[0] * held_out.shape[1])
    ours = psnr(held_out, codec.decode(data))
    # trivial baseline: uniform quantization of every pixel value, at the step whose ideal order-0
    # entropy code (3 channels, empirical entropy, no header) spends at least the codec's file rate
    best = -np.inf
    for step in range(1, 129):
        q = np.round(held_out.astype(np.float64) / step)
        _, counts = np.unique(q, return_counts=True)
        p = counts / counts.sum()
        rate = 3 * float(-(p * np.log2(p)).sum())
        if rate <= bpp:
            best = max(best, psnr(held_out, np.clip(q * step, 0, 255).astype(np.uint8)))
    assert ours > best + 1.0, (bpp, ours, best)


def test_decoded_images_survive_recompression(trained, held_out):
    codec, _ = trained
    first = codec.decode(codec.encode(held_out))
    assert codec.last_settled
    current = first
    for _ in range(5):  # decode → save as 8-bit → encode again: bit-identical every time
        current = codec.decode(codec.encode(current))
        np.testing.assert_array_equal(current, first)
    # without settling, the same cycles drift; settling pays at most that drift once, up front
    drifting = ImageCodec(codec.model, settle=0)
    generations = [drifting.decode(drifting.encode(held_out))]
    for _ in range(5):
        generations.append(drifting.decode(drifting.encode(generations[-1])))
    unsettled_first = psnr(held_out, generations[0])
    assert psnr(held_out, first) >= min(psnr(held_out, g) for g in generations) - 0.05
    assert unsettled_first - psnr(held_out, first) < 1.0, (unsettled_first, psnr(held_out, first))
    # an encoder that finds no fixed point in its rounds codes its input's own latents, not the
    # last round's (each round only drifts further from the input)
    impatient = ImageCodec(codec.model, settle=1)
    latents = impatient.latents(held_out)
    assert impatient.last_settled is False
    own = codec.model.quantized_latents(to_tensor(held_out, codec.model.multiple))
    assert all(torch.equal(a, b) for a, b in zip(latents, own))
    np.testing.assert_array_equal(impatient.decode(impatient.encode(held_out)), generations[0])


@pytest.mark.parametrize("entropy_model", ["factorized", "hyperprior", "conditional"])
def test_the_coders_differentiable_code_length_is_its_estimate(entropy_model, held_out):
    config = CodecConfig(levels=2, steps=1, hidden=8, entropy_model=entropy_model, hyper_channels=8, initial_gain=4.0)
    model = FlowCodec(config)
    x = to_tensor(held_out, model.multiple)
    model(x)
    perturb(model.flow, 0.02)
    model.update()
    values = [v.detach().requires_grad_(True) for v in model.analysis(x)]
    latents, bits, x_hat = model.code(values)
    natural = model.quantized_latents(x)
    assert all(torch.equal(a, b) for a, b in zip(latents, natural))
    assert bits.item() == pytest.approx(model.estimated_bits(natural), rel=1e-5)
    if entropy_model != "conditional":  # CompressAI's own evaluation-mode likelihoods agree
        reference = 0.0
        for level, y_hat in enumerate(natural):
            coder = model.entropy[level]
            if entropy_model == "factorized":
                reference -= coder.bottleneck(y_hat, training=False)[1].log2().sum().item()
            else:
                z_hat, z_likelihood = coder.side(coder.analysis(y_hat), training=False)
                y_likelihood = coder.conditional(y_hat, coder.scales(z_hat), training=False)[1]
                reference -= (z_likelihood.log2().sum() + y_likelihood.log2().sum()).item()
        assert bits.item() == pytest.approx(reference, rel=1e-5)
    assert torch.allclose(x_hat, model.synthesis(natural), atol=1e-6)
    (bits + x_hat.square().sum()).backward()  # straight-through: every latent gets a gradient
    assert all(v.grad is not None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0 for v in values)


@pytest.mark.parametrize("entropy_model", ["factorized", "conditional"])
def test_latents_a_little_off_the_grid_are_coded_as_the_decoder_rebuilds_them(entropy_model, held_out):
    """The refinement hands the coder straight-through latents, a few ulps off the quantization grid
    (a 1.5e-8 offset on one coarsest latent desynchronised a whole 512² photo's stream, 12 dB).
    With a split prior the finer levels' scales come from the coarser latents, so the encoder must
    compute them from exactly the latents the decoder rebuilds; offsets of ±0.05 (well inside the
    rounding cell) move enough scales across the coder's table boundaries to show it."""
    config = CodecConfig(levels=2, steps=1, hidden=8, entropy_model=entropy_model, initial_gain=4.0)
    model = FlowCodec(config)
    x = to_tensor(held_out, model.multiple)
    model(x)
    perturb(model, 0.05)  # the split prior too: its last layer starts at zero, a constant prior
    model.update()
    natural = model.quantized_latents(x)
    g = torch.Generator().manual_seed(0)
    off = [y + 0.1 * (torch.rand(y.shape, generator=g) - 0.5) for y in natural]
    assert all(torch.equal(a, b) for a, b in zip(model.canonical(off), natural))
    decoded = model.decompress_latents(model.compress_latents(off), *x.shape[-2:])
    assert all(torch.equal(a, b) for a, b in zip(decoded, natural))


@pytest.mark.parametrize("entropy_model", ["factorized", "conditional"])
def test_files_decode_the_same_with_any_thread_count(entropy_model):
    """A float32 convolution's last bits depend on the thread count; the coder's arithmetic runs
    on one thread, so a file written with one thread count decodes bit for bit with another."""
    config = CodecConfig(levels=2, steps=2, hidden=32, entropy_model=entropy_model, initial_gain=4.0)
    torch.manual_seed(0)
    model = FlowCodec(config)
    pixels = load_photo("coffee")[:128, :192]
    model(to_tensor(pixels, model.multiple))
    perturb(model, 0.05)
    codec = ImageCodec(model)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        data, expected = codec.encode(pixels), codec.reconstruct(pixels)
        torch.set_num_threads(2)
        assert codec.encode(pixels) == data
        np.testing.assert_array_equal(codec.decode(data), expected)
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(threads)


def test_refined_latents_lower_the_objective_exactly_and_keep_decodes_stable(trained, held_out, tmp_path):
    codec, _ = trained
    model, objective = codec.model, FAST.objective
    x = to_tensor(held_out, model.multiple)
    latents, record = refine_latents(model, x, held_out, objective, iterations=20)
    area = held_out.shape[0] * held_out.shape[1]
    natural = model.quantized_latents(x)
    # iteration 0 is the natural rounding, and every figure is the exact J of the latents kept
    assert record["start_bpp"] == pytest.approx(model.estimated_bits(natural) / area, rel=1e-5)
    assert record["best_bpp"] == pytest.approx(model.estimated_bits(latents) / area, rel=1e-5)
    decoded = to_pixels(model.synthesis(latents), *held_out.shape[:2], 3)
    assert record["best_d"] == pytest.approx(objective.of_pixels(held_out, decoded))
    assert record["best_j"] == pytest.approx(record["best_bpp"] + objective.lmbda * record["best_d"])
    assert record["best_j"] < record["start_j"] - 0.01, record
    # through ImageCodec (at a rate where encodes settle): the file holds refined latents, its real
    # J (file size, 8-bit decode) beats plain rounding's, it decodes as reconstruct() says, and the
    # decoded image re-encodes to the same file (coded by its own latents, not refined again)
    coarser = model.with_quantization_step(2.0)
    refining, plain = ImageCodec(coarser, objective=objective), ImageCodec(coarser)
    assert refining.refine == DEFAULT_REFINE and plain.refine == 0
    data = refining.encode(held_out)
    assert refining.last_settled and refining.last_refinement["best_j"] < refining.last_refinement["start_j"]
    first = refining.decode(data)
    np.testing.assert_array_equal(first, refining.reconstruct(held_out))
    plain_data = plain.encode(held_out)
    j = [8 * len(d) / area + objective.lmbda * objective.of_pixels(held_out, p)
         for d, p in ((data, first), (plain_data, plain.decode(plain_data)))]
    assert j[0] < j[1], j
    for _ in range(3):
        assert refining.encode(first) == data and refining.last_refinement is None
    # the objective travels with the saved codec; a codec saved without one does not refine
    refining.save(tmp_path / "refining.nfc")
    loaded = ImageCodec.load(tmp_path / "refining.nfc")
    assert loaded.objective == objective and loaded.refine == DEFAULT_REFINE
    assert loaded.encode(held_out) == data
    assert ImageCodec.load(tmp_path / "refining.nfc", refine=0).encode(held_out) == plain_data
    plain.save(tmp_path / "plain.nfc")
    assert ImageCodec.load(tmp_path / "plain.nfc").refine == 0
    with pytest.raises(ValueError, match="needs a flow codec and the objective"):
        ImageCodec(model, refine=5)
    with pytest.raises(ValueError, match="refine must be an integer"):
        ImageCodec(model, objective=objective, refine=-1)


def test_corrupt_files_give_one_line_errors(trained, held_out):
    codec, _ = trained
    data = codec.encode(held_out)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    cases = {
        "truncated": data[: len(data) - 7],
        "corrupt": bytes(flipped),
        "no NFIC magic": b"\x89PNG" + data[4:],
        "header announces": data + b"\0\0",
        "shorter than the header": data[:10],
    }
    for expected, broken in cases.items():
        with pytest.raises(BitstreamError, match=expected) as info:
            codec.decode(broken)
        assert "\n" not in str(info.value)
    other = FlowCodec(TINY)
    other(to_tensor(held_out, other.multiple))
    with pytest.raises(BitstreamError, match="another codec model"):
        ImageCodec(other).decode(data)
    # a valid checksum over streams that are not this image's: still a clear error, never garbage
    body = bytearray(data[:-4])
    body[-1] ^= 0xFF
    resealed = bytes(body) + zlib.crc32(bytes(body)).to_bytes(4, "big")
    try:
        out = codec.decode(resealed)
        assert out.shape == held_out.shape  # rANS decodes any bytes; the shape is still right
    except BitstreamError as error:
        assert "\n" not in str(error)


def test_bad_images_are_clear_errors(trained, tmp_path):
    codec, _ = trained
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ImageError, match="cannot read image"):
        read_image(tmp_path / "notes.png")
    with pytest.raises(ImageError, match="uint8"):
        codec.encode(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ImageError, match="shape"):
        codec.encode(np.zeros((8, 8, 4), dtype=np.uint8))
    with pytest.raises(ImageError, match="does not exist"):
        codec.compress_file(tmp_path / "missing.png", tmp_path / "x.nfic")
    write_image(tmp_path / "a.png", np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="refusing to overwrite the input"):
        codec.compress_file(tmp_path / "a.png", tmp_path / "a.png")


def test_save_load_keeps_the_identifier_and_decodes(trained, held_out, tmp_path):
    codec, _ = trained
    codec.save(tmp_path / "codec.nfc")
    loaded = ImageCodec.load(tmp_path / "codec.nfc")
    assert loaded.identifier == codec.identifier
    np.testing.assert_array_equal(loaded.decode(codec.encode(held_out)), codec.reconstruct(held_out))
    (tmp_path / "broken.nfc").write_bytes((tmp_path / "codec.nfc").read_bytes()[:-50])
    with pytest.raises(FlowFileError, match="truncated"):
        ImageCodec.load(tmp_path / "broken.nfc")


def test_interrupted_training_resumes_to_the_same_model(photos, tmp_path):
    settings = TrainingSettings(lmbda=0.01, steps=6, batch=2, patch=32, seed=3, checkpoint_every=3)
    torch.manual_seed(0)
    straight, _ = train_codec(photos, TINY, settings, device="cpu", progress=False)
    first = TrainingSettings(**{**settings.__dict__, "steps": 3})
    train_codec(photos, TINY, first, checkpoint=tmp_path / "run.ckpt", device="cpu", progress=False)
    spent = TrainingSettings(**{**settings.__dict__, "time_budget_s": 0.0})  # a spent budget: no step, the model written
    _, history = train_codec(photos, TINY, spent, checkpoint=tmp_path / "run.ckpt", device="cpu", progress=False)
    assert [h["step"] for h in history] == list(range(3))
    resumed, history = train_codec(photos, TINY, settings, checkpoint=tmp_path / "run.ckpt", device="cpu", progress=False)
    assert [h["step"] for h in history] == list(range(6))
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_the_learning_rate_drops_once_at_its_share_of_the_run_and_resumes_dropped(photos, tmp_path):
    from nfapps.atomic import load_container

    settings = TrainingSettings(lmbda=0.01, steps=4, batch=2, patch=32, lr=1e-3, seed=1, lr_drop_at=0.5)
    train_codec(photos, TINY, settings, checkpoint=tmp_path / "run.ckpt", device="cpu", progress=False)
    groups = load_container(tmp_path / "run.ckpt", "codec-checkpoint")["main_opt"]["param_groups"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 1e-3])  # the flow's, and the gains' (10×)
    longer = TrainingSettings(**{**settings.__dict__, "steps": 6})
    train_codec(photos, TINY, longer, checkpoint=tmp_path / "run.ckpt", device="cpu", progress=False)
    groups = load_container(tmp_path / "run.ckpt", "codec-checkpoint")["main_opt"]["param_groups"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 1e-3])  # not dropped twice
    with pytest.raises(ValueError, match="lr_drop_at"):
        TrainingSettings(lr_drop_at=0.0)


def test_ms_ssim_of_rgb_and_grayscale_images():
    from nfapps.codec import ms_ssim

    image = load_photo("astronaut")[:200, :240]
    noise = np.random.default_rng(0).normal(0, 8, image.shape)
    noisy = np.clip(image + noise, 0, 255).astype(np.uint8)
    noisier = np.clip(image + 3 * noise, 0, 255).astype(np.uint8)
    assert ms_ssim(image, image) == pytest.approx(1.0)
    assert 0 < ms_ssim(image, noisier) < ms_ssim(image, noisy) < 1
    gray = load_photo("camera")[:200, :200]
    assert 0 < ms_ssim(gray, np.clip(gray + noise[:, :200, 0], 0, 255).astype(np.uint8)) < 1
    assert np.isnan(ms_ssim(image[:160], image[:160]))  # too small for five scales


def test_ms_ssim_distortion_trains_and_checks_its_patch_size(tmp_path):
    from nfapps.codec.distortion import distortion

    x = patch_batch([load_photo("china")], 2, 176, 0, 0)
    noisy = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    assert distortion(x, x, "ms-ssim").item() == pytest.approx(0.0, abs=1e-6)
    assert 0 < distortion(noisy, x, "ms-ssim").item() < distortion(4 * noisy - 3 * x, x, "ms-ssim").item() < 1
    assert distortion(noisy, x, "mse").item() == pytest.approx(255.0**2 * (noisy - x).square().mean().item())
    with pytest.raises(ValueError, match="patches larger than 160 pixels.*--patch 192"):
        TrainingSettings(distortion="ms-ssim", patch=64)
    with pytest.raises(ValueError, match="distortion must be one of mse, ms-ssim"):
        TrainingSettings(distortion="ssim")

    photos = [load_photo(n)[:256, :256] for n in ("china", "flower")]
    settings = TrainingSettings(lmbda=30.0, steps=12, batch=2, patch=176, lr=5e-3, seed=0, distortion="ms-ssim")
    torch.manual_seed(0)
    _, history = train_codec(photos, TINY, settings, checkpoint=tmp_path / "run.ckpt", device="cpu", progress=False)
    scores = [h["ms_ssim"] for h in history]
    assert all(0 < s <= 1 for s in scores)
    assert history[-1]["loss"] == pytest.approx(history[-1]["bpp"] + 30.0 * (1 - scores[-1]), rel=1e-5)
    assert np.mean([h["loss"] for h in history[-3:]]) < np.mean([h["loss"] for h in history[:3]])
    with pytest.raises(ValueError, match="another codec, λ or distortion"):  # the same checkpoint with MSE
        train_codec(photos, TINY, TrainingSettings(lmbda=30.0, steps=13, batch=2, patch=176, seed=0),
                    checkpoint=tmp_path / "run.ckpt", device="cpu", progress=False)


def test_patches_depend_only_on_seed_and_step(photos):
    assert torch.equal(patch_batch(photos, 3, 32, 1, 7), patch_batch(photos, 3, 32, 1, 7))
    assert not torch.equal(patch_batch(photos, 3, 32, 1, 7), patch_batch(photos, 3, 32, 1, 8))


def test_training_and_evaluation_photos_are_disjoint():
    assert not set(EVALUATION) & set(TRAINING)
    assert "motorcycle_right" not in TRAINING  # the other view of an evaluation photo


def test_cli_compress_decompress_and_errors(trained, held_out, tmp_path, capsys):
    codec, _ = trained
    codec.save(tmp_path / "codec.nfc")
    write_image(tmp_path / "in.png", held_out)
    assert main(["codec", "compress", "--model", str(tmp_path / "codec.nfc"), str(tmp_path / "in.png"), str(tmp_path / "in.nfic")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bytes"] == (tmp_path / "in.nfic").stat().st_size
    assert main(["codec", "decompress", "--model", str(tmp_path / "codec.nfc"), str(tmp_path / "in.nfic"), str(tmp_path / "out.png")]) == 0
    np.testing.assert_array_equal(read_image(tmp_path / "out.png"), codec.reconstruct(held_out))
    (tmp_path / "cut.nfic").write_bytes((tmp_path / "in.nfic").read_bytes()[:-3])
    capsys.readouterr()
    assert main(["codec", "decompress", "--model", str(tmp_path / "codec.nfc"), str(tmp_path / "cut.nfic"), str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert "truncated" in err and err.count("\n") == 1
    assert not (tmp_path / "o.png").exists()
    # this codec was saved without its training objective: it cannot refine its latents
    assert main(["codec", "compress", "--refine", "5", "--model", str(tmp_path / "codec.nfc"), str(tmp_path / "in.png"),
                 str(tmp_path / "r.nfic")]) == 2
    err = capsys.readouterr().err
    assert "objective" in err and err.count("\n") == 1 and not (tmp_path / "r.nfic").exists()


def test_cli_train_and_evaluate_on_a_folder(tmp_path, capsys, photos):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, p in enumerate(photos):
        write_image(folder / f"{i}.png", p[:64, :64])
    args = ["codec", "train", "--images", str(folder), "--out", str(tmp_path / "c.nfc"), "--steps", "3", "--batch", "2",
            "--patch", "32", "--levels", "2", "--steps-per-level", "1", "--hidden", "8", "-q", "--device", "cpu"]
    assert main(args) == 0
    assert (tmp_path / "c.nfc").exists() and (tmp_path / "c.nfc.ckpt").exists()
    # the entropy model by default: factorized at λ = 0.01, the split prior at high rates
    assert ImageCodec.load(tmp_path / "c.nfc").model.config.entropy_model == "factorized"
    high = ["codec", "train", "--lmbda", "0.3", *args[2:4], "--out", str(tmp_path / "h.nfc"), *args[6:]]
    assert main(high) == 0
    assert ImageCodec.load(tmp_path / "h.nfc").model.config.entropy_model == "conditional"
    assert main([*high[:-2], "--entropy-model", "factorized", "--out", str(tmp_path / "hf.nfc"), *high[-2:]]) == 0
    assert ImageCodec.load(tmp_path / "hf.nfc").model.config.entropy_model == "factorized"
    capsys.readouterr()
    baseline = ["codec", "train", "--architecture", "bmshj2018-hyperprior", "--patch", "32", "--images", str(folder),
                "--out", str(tmp_path / "b.nfc"), "--steps", "1", "-q", "--device", "cpu"]
    assert main(baseline) == 2  # its sides must be multiples of 64: a one-line error, not a shape mismatch deep inside
    err = capsys.readouterr().err
    assert "multiples of 64" in err and "--patch 64" in err and err.count("\n") == 1
    assert main([*args[:2], "--distortion", "ms-ssim", *args[2:]]) == 2  # MS-SSIM on 32-pixel patches
    err = capsys.readouterr().err
    assert "larger than 160 pixels" in err and err.count("\n") == 1
    assert main(["codec", "evaluate", "--model", str(tmp_path / "c.nfc"), "--images", str(folder), "--out",
                 str(tmp_path / "e.json"), "--device", "cpu"]) == 0
    summary = json.loads((tmp_path / "e.json").read_text())
    assert len(summary["images"]) == 3 and all(r["bpp"] > 0 for r in summary["images"])
    assert summary["mean_ms_ssim"] is None and all(r["ms_ssim"] is None for r in summary["images"])  # 64²: too small
    # `codec train` saves the objective, so the encoder refines by default; --refine 0 rounds
    assert summary["refine"] == DEFAULT_REFINE
    assert all(r["refinement"]["best_j"] <= r["refinement"]["start_j"] for r in summary["images"])
    assert main(["codec", "evaluate", "--refine", "0", "--model", str(tmp_path / "c.nfc"), "--images", str(folder), "--out",
                 str(tmp_path / "e0.json"), "--device", "cpu"]) == 0
    rounded = json.loads((tmp_path / "e0.json").read_text())
    assert rounded["refine"] == 0 and all(r["refinement"] is None for r in rounded["images"])


def test_the_file_costs_about_the_models_own_rate(trained, held_out):
    codec, _ = trained
    data = codec.encode(held_out)
    pixels = held_out.shape[0] * held_out.shape[1]
    header_bits = 8 * (24 + 4 * codec.model.streams_per_image + 4)
    estimate = codec.estimated_bpp(data)
    streams = (8 * len(data) - header_bits) / pixels
    assert 0 < estimate and abs(streams / estimate - 1) < 0.1, (streams, estimate)
    # training ends by solving the bottlenecks' quantiles: the coder's range holds the tails
    for model in codec.model.entropy:
        logits = model.bottleneck._logits_cumulative(model.bottleneck.quantiles, stop_gradient=True)
        assert torch.allclose(logits, model.bottleneck.target.expand_as(logits), atol=1e-3)
