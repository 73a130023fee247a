"""Compression benchmark: the flow codec against JPEG, JPEG 2000, WebP, AVIF, HEIF and a CompressAI
learned baseline, in one run.

For every λ of ``--lambdas`` a flow codec, and for every λ of ``--baseline-lambdas`` a
CompressAI baseline (``--baseline``, Ballé et al. 2018's scale hyperprior by default), is
trained (``nfapps codec train``'s code: the same patches and loss R + λ·255²·MSE, resumed from
``--work`` when interrupted, reused when done) for at most ``--budget-minutes`` on the bundled
training photos; the flow codecs' entropy model is ``--entropy-model`` (by default "auto", as
`nfapps codec train` chooses: factorized below λ = 0.1, the split prior from there on). The flow
codecs' encoder optimises each image's latents for R + λ·D (``nfapps.codec.refine``); the same
models are also run with plainly rounded latents. One flow model (``--knob-lambda``) is also run
with its quantization step varied (``--knob-steps``, rounded latents): the paper's one-model range
of rates. Then, on the held-out evaluation photos (astronaut, coffee, chelsea, motorcycle):

- rate–distortion: real file sizes (bits per pixel) and PSNR / MS-SSIM of every codec, the
  Pillow codecs by quality sweeps (HEIF through pillow-heif when installed: the ``bench``
  extra); PSNR of each codec interpolated at 0.25, 0.5, 1, 2 and 4 bpp (in log rate, per image,
  then averaged; NaN where a codec's curve does not reach); BD-rate of the flow codec against
  every other codec (Bjøntegaard, with monotone PCHIP interpolation of log rate against PSNR over
  the PSNR range both cover, per image, then averaged); each codec's highest PSNR (near-lossless);
  the learned codecs' file sizes against their models' own rate estimates (−Σ log₂ p);
- re-compression: every codec at its setting nearest the flow codec's rate nearest 1 bpp on each
  image, decoded to 8 bits and encoded again N times; PSNR against the original after each N of
  ``--cycles``, and a crop of the first photo after the last cycle, per codec;
- encode and decode time per megapixel.

Writes ``compression.json``, ``compression.png`` (RD curves in PSNR and MS-SSIM, re-compression
curves) and ``compression-crops.png`` into ``--out`` and prints the tables. Only the numbers of
one run are comparable.

Usage::

    python applications/benchmarks/compression.py --budget-minutes 15 --out applications/benchmarks/results
    python applications/benchmarks/compression.py --quick --out /tmp/cbench   # smoke run (minutes)
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nfapps.codec import CodecConfig, ImageCodec, TrainingSettings, entropy_model_for, psnr
from nfapps.codec.baseline import ARCHITECTURES, BaselineConfig
from nfapps.codec.bitstream import unpack
from nfapps.codec.job import measure, run_train
from nfapps.codec.model import ENTROPY_MODELS
from nfapps.codec.photos import EVALUATION, load_photos
from nfapps.outputs import pyplot, save_figure, write_json

logger = logging.getLogger("compression")

MATCHED_RATES = (0.25, 0.5, 1.0, 2.0, 4.0)

#: The name of the flow codec of one model (λ = ``--knob-lambda``) with its quantization step varied.
KNOB = "flow, step knob"

#: The name of the flow codec whose encoder rounds the latents (no rate–distortion refinement).
ROUNDED = "flow, rounded latents"


# -- classical codecs through Pillow -------------------------------------------------------------
def _pillow_codec(fmt: str, key: str, settings: list[Any], **extra: Any) -> dict[str, Any]:
    from PIL import Image

    def encode(pixels: np.ndarray, setting: Any) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=fmt, **{key: setting}, **extra)
        return buffer.getvalue()

    def decode(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))

    return {"encode": encode, "decode": decode, "settings": settings}


def classical_codecs() -> dict[str, dict[str, Any]]:
    """Name → {encode(pixels, setting) → bytes, decode(bytes) → pixels, settings (low → high rate)}."""
    from PIL import features

    codecs = {"JPEG": _pillow_codec("JPEG", "quality", list(range(5, 96, 5)) + [98])}
    if features.check("webp"):
        codecs["WebP"] = _pillow_codec("WEBP", "quality", list(range(0, 101, 5)), method=6)
    if features.check("jpg_2000"):
        ratios = [320, 160, 96, 64, 48, 32, 24, 16, 12, 8, 6, 4, 3]
        codecs["JPEG 2000"] = _pillow_codec("JPEG2000", "quality_layers", [[r] for r in ratios], quality_mode="rates",
                                              irreversible=True)  # the 9/7 wavelet of lossy JPEG 2000
    if features.check("avif"):
        codecs["AVIF"] = _pillow_codec("AVIF", "quality", list(range(0, 101, 5)))
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        codecs["HEIF"] = _pillow_codec("HEIF", "quality", list(range(0, 101, 5)))
    except ImportError:
        logger.warning("pillow-heif is not installed (pip install -e '.[bench]'): HEIF is left out")
    return codecs


# -- measurements ----------------------------------------------------------------------------------
def rate_of(data: bytes, pixels: np.ndarray) -> float:
    return 8 * len(data) / (pixels.shape[0] * pixels.shape[1])


def interpolate_psnr(points: list[tuple[float, float]], rate: float) -> float:
    """PSNR at ``rate`` from (bpp, PSNR) points, linear in log rate; NaN outside their range."""
    points = sorted(points)
    rates = np.log([p[0] for p in points])
    if not points or not rates[0] <= math.log(rate) <= rates[-1]:
        return math.nan
    return float(np.interp(math.log(rate), rates, [p[1] for p in points]))


def mean_finite(values: list[float]) -> float:
    """The mean of the finite values; NaN when there are none (a rate no curve reaches)."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def bd_rate(anchor: list[tuple[float, float]], test: list[tuple[float, float]]) -> float:
    """Bjøntegaard delta rate of ``test`` against ``anchor`` in %, (bpp, PSNR) points each:
    the mean log-rate difference at equal PSNR over the PSNR range both cover (PCHIP in PSNR)."""
    from scipy.interpolate import PchipInterpolator

    def curve(points):
        points = sorted(points, key=lambda p: p[1])
        psnrs, log_rates = [], []
        for r, q in points:  # keep PSNR strictly increasing
            if not psnrs or q > psnrs[-1] + 1e-9:
                psnrs.append(q)
                log_rates.append(math.log(r))
        return np.array(psnrs), np.array(log_rates)

    pa, ra = curve(anchor)
    pt, rt = curve(test)
    if len(pa) < 2 or len(pt) < 2:
        return math.nan
    low, high = max(pa[0], pt[0]), min(pa[-1], pt[-1])
    if high <= low:
        return math.nan
    grid = np.linspace(low, high, 200)
    diff = np.mean(PchipInterpolator(pt, rt)(grid) - PchipInterpolator(pa, ra)(grid))
    return float((math.exp(diff) - 1) * 100)


def sweep(name: str, codec: dict[str, Any], photos: dict[str, np.ndarray],
          extra: Callable[[np.ndarray, bytes, np.ndarray], dict[str, Any]] | None) -> dict[str, list[dict[str, Any]]]:
    """Per image, the bpp, PSNR, MS-SSIM, times (and ``extra``'s entries) of every setting."""
    out = {}
    for image, pixels in photos.items():
        out[image] = [{"setting": setting, **measure(lambda p, s=setting: codec["encode"](p, s), codec["decode"], pixels, extra)}
                      for setting in codec["settings"]]
        logger.info("%s %s: %d settings", name, image, len(out[image]))
    return out


def recompress(encode: Callable[[np.ndarray], bytes], decode: Callable[[bytes], np.ndarray], pixels: np.ndarray,
               cycles: list[int]) -> tuple[dict[str, float], np.ndarray]:
    """PSNR against the original after N decode → encode cycles (N = 1 is the first decode), and
    the image after the last cycle. A cycle that gives back its own input is a fixed point of the
    (deterministic) codec — every later cycle would give it back again — so the remaining cycles
    are not run; their PSNR is that image's."""
    current, out = pixels, {}
    for n in range(1, max(cycles) + 1):
        decoded = decode(encode(current))
        fixed = n > 1 and np.array_equal(decoded, current)
        current = decoded
        if fixed:
            out.update({str(m): psnr(pixels, current) for m in cycles if m >= n})
            break
        if n in cycles:
            out[str(n)] = psnr(pixels, current)
    return out, current


# -- the learned codecs -----------------------------------------------------------------------------
def model_path(kind: str, lmbda: float, args: argparse.Namespace) -> Path:
    """Where the model of ``kind`` ("flow" or a CompressAI baseline architecture) for λ lives in ``--work``."""
    stem = f"flow-{entropy_model_for(lmbda, choice=args.entropy_model)}" if kind == "flow" else f"baseline-{kind}"
    return Path(args.work) / f"{stem}-{lmbda:g}.nfc"


def learned_codecs(kind: str, lambdas: list[float], args: argparse.Namespace) -> dict[float, ImageCodec]:
    """λ → trained codec of ``kind``, each trained for at most ``--budget-minutes`` into ``--work``
    (resumed when interrupted; reused when done)."""
    models = {}
    for lmbda in lambdas:
        path = model_path(kind, lmbda, args)
        if not path.exists():
            config = (CodecConfig(entropy_model=entropy_model_for(lmbda, choice=args.entropy_model)) if kind == "flow"
                      else BaselineConfig(kind))
            settings = TrainingSettings(lmbda=lmbda, steps=10**7, time_budget_s=60 * args.budget_minutes)
            run_train(path, None, config, settings, device=args.device)
        models[lmbda] = ImageCodec.load(path, args.device)
    return models


def as_codec(models: dict[float, ImageCodec]) -> dict[str, Any]:
    """Trained codecs by λ as one codec with a setting (λ), like the Pillow codecs: a file is
    decoded by the model its header names (``model_of``)."""
    by_identifier = {codec.identifier: codec for codec in models.values()}

    def model_of(data: bytes) -> ImageCodec:
        return by_identifier[unpack(data)[0].model]

    return {"encode": lambda pixels, lmbda: models[lmbda].encode(pixels), "decode": lambda data: model_of(data).decode(data),
            "settings": sorted(models), "model_of": model_of}


def training_record(models: dict[float, ImageCodec], args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """Steps and final training figures of each model (from the JSON ``nfapps codec train`` writes)."""
    out = {}
    for lmbda in models:
        path = model_path(kind, lmbda, args).with_suffix(".nfc.json")
        if path.exists():
            info = json.loads(path.read_text())
            out[str(lmbda)] = {k: info.get(k) for k in ("steps", "final_bpp", "final_psnr")}
            out[str(lmbda)]["entropy_model"] = getattr(models[lmbda].model.config, "entropy_model", kind)
    return out


# -- the run ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.0008, 0.003, 0.01, 0.02, 0.04, 0.1, 0.3, 1.2],
                        help="rate points of the flow codec: one model per λ (the last for near-lossless)")
    parser.add_argument("--baseline-lambdas", type=float, nargs="+", default=[0.0008, 0.003, 0.01, 0.04],
                        help="rate points of the CompressAI baseline")
    parser.add_argument("--budget-minutes", type=float, default=15.0, help="training time per rate point (default: 15)")
    parser.add_argument("--entropy-model", choices=("auto", *ENTROPY_MODELS), default="auto",
                        help="the flow codecs' entropy model (default: auto, as `nfapps codec train`: the split prior from λ = 0.1 on)")
    parser.add_argument("--baseline", choices=(*ARCHITECTURES, "none"), default="bmshj2018-hyperprior",
                        help="CompressAI learned baseline trained on the same data, loss and budget (default: bmshj2018-hyperprior)")
    parser.add_argument("--knob-lambda", type=float, default=0.01,
                        help="the flow model whose quantization step is varied: the paper's one-model range of rates")
    parser.add_argument("--knob-steps", type=float, nargs="+", default=[4.0, 2.0, 1.4, 1.0, 0.7, 0.5, 0.25, 0.125],
                        help="quantization steps, in units of the knob model's trained step")
    parser.add_argument("--cycles", type=int, nargs="+", default=[1, 2, 5, 10, 20, 50])
    parser.add_argument("--work", default="runs/compression", help="trained models and their checkpoints (resumed)")
    parser.add_argument("--out", default="applications/benchmarks/results")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: two λ, one minute each, two photos, few cycles")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    if args.quick:
        args.lambdas, args.baseline_lambdas, args.budget_minutes, args.cycles = [0.003, 0.01], [0.003, 0.01], 1.0, [1, 2, 5]
    photos = load_photos(EVALUATION[:2] if args.quick else EVALUATION)
    out = Path(args.out)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    learned = {"flow": learned_codecs("flow", args.lambdas, args)}
    if args.baseline != "none":
        learned[args.baseline] = learned_codecs(args.baseline, args.baseline_lambdas, args)
    learned[ROUNDED] = {lmbda: ImageCodec(codec.model, args.device, refine=0) for lmbda, codec in learned["flow"].items()}
    knob_model = learned["flow"][args.knob_lambda].model if args.knob_lambda in learned["flow"] else None
    if knob_model is not None and knob_model.config.entropy_model == "factorized":  # one model, its step as the knob
        learned[KNOB] = {step: ImageCodec(knob_model.with_quantization_step(step), args.device) for step in args.knob_steps}
    codecs = {name: as_codec(models) for name, models in learned.items()} | classical_codecs()

    def learned_entries(model_of: Callable[[bytes], ImageCodec]) -> Callable[[np.ndarray, bytes, np.ndarray], dict[str, Any]]:
        def entries(pixels: np.ndarray, data: bytes, decoded: np.ndarray) -> dict[str, Any]:
            codec = model_of(data)
            return {"estimated_bpp": codec.estimated_bpp(data), "settled": codec.last_settled}
        return entries

    results = {name: sweep(name, codec, photos, learned_entries(codec["model_of"]) if name in learned else None)
               for name, codec in codecs.items()}

    def points(codec: str, image: str) -> list[tuple[float, float]]:
        return [(r["bpp"], r["psnr"]) for r in results[codec][image]]

    matched = {codec: {str(rate): mean_finite([interpolate_psnr(points(codec, im), rate) for im in photos])
                       for rate in MATCHED_RATES} for codec in results}
    bd = {anchor: mean_finite([bd_rate(points(anchor, im), points("flow", im)) for im in photos]) for anchor in results if anchor != "flow"}
    best = {codec: {"psnr": float(np.mean([max(r["psnr"] for r in results[codec][im]) for im in photos])),
                    "bpp": float(np.mean([max(results[codec][im], key=lambda r: r["psnr"])["bpp"] for im in photos]))}
            for codec in results}
    timing = {codec: {"encode_s_per_mp": float(np.mean([r["encode_s_per_mp"] for im in photos for r in results[codec][im]])),
                      "decode_s_per_mp": float(np.mean([r["decode_s_per_mp"] for im in photos for r in results[codec][im]]))}
              for codec in results}

    # re-compression at the flow codec's rate nearest 1 bpp, every other codec at its setting nearest that rate
    recompression: dict[str, dict[str, Any]] = {}
    last_generation: dict[str, np.ndarray] = {}
    for image, pixels in photos.items():
        target = min((r["bpp"] for r in results["flow"][image]), key=lambda b: abs(math.log(b)))
        recompression[image] = {}
        for name, codec in codecs.items():
            if name in (KNOB, ROUNDED):
                continue  # the same flow as "flow": a decoded image re-encodes the same way
            row = min(results[name][image], key=lambda r: abs(math.log(r["bpp"]) - math.log(target)))
            psnrs, final = recompress(lambda p, s=row["setting"], c=codec: c["encode"](p, s), codec["decode"], pixels, args.cycles)
            recompression[image][name] = {"setting": row["setting"], "bpp": row["bpp"], "psnr": psnrs}
            if image == next(iter(photos)):
                last_generation[name] = final
    loss = {codec: {str(n): float(np.mean([recompression[im][codec]["psnr"][str(n)] - recompression[im][codec]["psnr"]["1"]
                                            for im in photos])) for n in args.cycles} for codec in recompression[next(iter(photos))]}
    size_vs_estimate = {name: float(np.mean([r["bpp"] / r["estimated_bpp"] - 1 for im in photos for r in results[name][im]]))
                        for name in learned}

    summary = {"settings": vars(args), "photos": list(photos), "command": " ".join(sys.argv),
               "training": {name: training_record(models, args, name) for name, models in learned.items()},
               "matched_psnr": matched, "bd_rate_flow_vs": bd, "highest_quality": best, "timing": timing,
               "recompression": recompression, "recompression_loss_db": loss, "file_size_over_estimate": size_vs_estimate,
               "curves": results}
    write_json(out / "compression.json", summary)
    _plot(results, loss, photos, out / "compression.png")
    first = next(iter(photos))
    _plot_crops(photos[first], last_generation, recompression[first], max(args.cycles), out / "compression-crops.png")
    _print_tables(matched, bd, best, loss, timing, size_vs_estimate)
    return 0


def _plot(results, loss, photos, path: Path) -> None:
    plt = pyplot()
    fig, (rd, ssim, rc) = plt.subplots(1, 3, figsize=(17, 4.8))
    for index, (codec, per_image) in enumerate(results.items()):
        learned = "estimated_bpp" in per_image[next(iter(photos))][0]
        style = {"marker": "o" if learned else ".", "lw": 2.5 if codec == "flow" else 1.5 if learned else 1, "label": codec,
                 "ls": "--" if codec in (KNOB, ROUNDED) else "-", "color": f"C{index % 10}"}
        bpp = np.mean([[r["bpp"] for r in per_image[im]] for im in photos], axis=0)
        order = np.argsort(bpp)
        rd.plot(bpp[order], np.mean([[r["psnr"] for r in per_image[im]] for im in photos], axis=0)[order], **style)
        ssim_db = np.mean([[-10 * math.log10(max(1 - r["ms_ssim"], 1e-10)) for r in per_image[im]] for im in photos], axis=0)
        ssim.plot(bpp[order], ssim_db[order], **style)
        if codec in loss:
            cycles = [int(n) for n in loss[codec]]
            rc.plot(cycles, [loss[codec][str(n)] for n in cycles], marker=style["marker"], lw=style["lw"], label=codec,
                    color=style["color"])
    rd.set(xscale="log", xlabel="bits per pixel (file size)", ylabel="PSNR (dB), mean over photos", title="rate–distortion (PSNR)")
    ssim.set(xscale="log", xlabel="bits per pixel (file size)", ylabel="MS-SSIM (dB: −10 log₁₀(1 − MS-SSIM))",
             title="rate–distortion (MS-SSIM)")
    rc.set(xscale="log", xlabel="decode → encode cycles N", ylabel="PSNR change since N = 1 (dB)", title="re-compression")
    for axis in (rd, ssim, rc):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    save_figure(fig, path)


def _plot_crops(original: np.ndarray, generations: dict[str, np.ndarray], recompression: dict[str, Any], cycles: int,
                path: Path, side: int = 128) -> None:
    """The same crop of one photo: the original, and each codec's image after ``cycles`` cycles."""
    plt = pyplot()
    h, w = original.shape[:2]
    top, left = max(0, h // 2 - side // 2), max(0, w // 2 - side // 2)
    crop = (slice(top, top + side), slice(left, left + side))
    panels = [("original", original[crop])] + [
        (f"{name}\n{recompression[name]['bpp']:.2f} bpp, N = {cycles}: {recompression[name]['psnr'][str(cycles)]:.2f} dB",
         image[crop]) for name, image in generations.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.1))
    for axis, (title, image) in zip(np.atleast_1d(axes), panels):
        axis.imshow(image, interpolation="nearest")
        axis.set_title(title, fontsize=8)
        axis.axis("off")
    save_figure(fig, path)


def _print_tables(matched, bd, best, loss, timing, size_vs_estimate) -> None:
    name = max(len(codec) for codec in matched) + 2
    print("PSNR (dB) at matched rates (mean over photos; interpolated in log rate; nan: a rate the codec's curve does not reach)")
    print(f"{'codec':<{name}}" + "".join(f"{r:>9g} bpp" for r in MATCHED_RATES) + "     best: PSNR at bpp")
    for codec, row in matched.items():
        print(f"{codec:<{name}}" + "".join(f"{row[str(r)]:>13.2f}" for r in MATCHED_RATES)
              + f"{best[codec]['psnr']:>13.2f} at {best[codec]['bpp']:.2f}")
    print("\nBD-rate of the flow codec (negative: fewer bits at equal PSNR): " + ", ".join(f"vs {k} {v:+.1f} %" for k, v in bd.items()))
    print("file size over the model's own estimate: " + ", ".join(f"{k} {100 * v:+.2f} %" for k, v in size_vs_estimate.items()))
    cycles = list(next(iter(loss.values())))
    print("\nre-compression: PSNR change since the first decode (dB)")
    print(f"{'codec':<{name}}" + "".join(f"{'N=' + n:>9}" for n in cycles))
    for codec, row in loss.items():
        print(f"{codec:<{name}}" + "".join(f"{row[n]:>9.3f}" for n in cycles))
    print("\nencode / decode s per megapixel (CPU)")
    for codec, row in timing.items():
        print(f"{codec:<{name}}{row['encode_s_per_mp']:>9.3f}{row['decode_s_per_mp']:>9.3f}")


if __name__ == "__main__":
    sys.exit(main())
