"""Compression benchmark: the flow codec against JPEG, JPEG 2000, WebP, AVIF and HEIF, in one run.

For every λ of ``--lambdas`` a flow codec is trained (``nfapps codec train``'s code, resumed
from ``--work`` when interrupted) for at most ``--budget-minutes`` on the bundled training
photos; then, on the held-out evaluation photos (astronaut, coffee, chelsea, motorcycle):

- rate–distortion: the flow codec's real file sizes (bits per pixel) and PSNR / MS-SSIM, next to
  quality sweeps of every Pillow codec (HEIF through pillow-heif when installed: the ``bench``
  extra); PSNR of each codec interpolated at 0.25, 0.5, 1 and 2 bpp (in log rate, per image,
  then averaged); BD-rate of the flow codec against JPEG and WebP (Bjøntegaard, with monotone
  PCHIP interpolation of log rate against PSNR over the PSNR range both cover, per image, then
  averaged); the file size against the model's own rate estimate (−Σ log₂ p of the latents);
- re-compression: every codec at the setting nearest the flow codec's rate on each image, decoded
  to 8 bits and encoded again N times; PSNR against the original after each N of ``--cycles``;
- encode and decode time per megapixel.

Writes ``compression.json`` and ``compression.png`` (RD curves and re-compression curves) into
``--out`` and prints the tables. Only the numbers of one run are comparable.

Usage::

    python applications/benchmarks/compression.py --budget-minutes 30 --out applications/benchmarks/results
    python applications/benchmarks/compression.py --quick --out /tmp/cbench   # smoke run (minutes)
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nfapps.codec import CodecConfig, ImageCodec, TrainingSettings, psnr
from nfapps.codec.job import evaluate, measure, run_train
from nfapps.codec.photos import EVALUATION, load_photos
from nfapps.outputs import pyplot, save_figure, write_json

logger = logging.getLogger("compression")

MATCHED_RATES = (0.25, 0.5, 1.0, 2.0)


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


def ms_ssim(reference: np.ndarray, decoded: np.ndarray) -> float:
    from pytorch_msssim import ms_ssim as _ms_ssim

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.float32)).permute(2, 0, 1)[None]

    return float(_ms_ssim(t(reference), t(decoded), data_range=255.0, size_average=True))


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


def sweep(name: str, codec: dict[str, Any], photos: dict[str, np.ndarray]) -> dict[str, list[dict[str, float]]]:
    """Per image, the (bpp, PSNR, MS-SSIM, times) of every setting."""
    out = {}
    for image, pixels in photos.items():
        out[image] = [{"setting": setting, **measure(lambda p, s=setting: codec["encode"](p, s), codec["decode"], pixels, ms_ssim_entry)}
                      for setting in codec["settings"]]
        logger.info("%s %s: %d settings", name, image, len(out[image]))
    return out


def ms_ssim_entry(pixels: np.ndarray, data: bytes, decoded: np.ndarray) -> dict[str, float]:
    return {"ms_ssim": ms_ssim(pixels, decoded)}


def recompress(encode: Callable[[np.ndarray], bytes], decode: Callable[[bytes], np.ndarray], pixels: np.ndarray,
               cycles: list[int]) -> dict[str, float]:
    """PSNR against the original after N decode → encode cycles (N = 1 is the first decode)."""
    current, out = pixels, {}
    for n in range(1, max(cycles) + 1):
        current = decode(encode(current))
        if n in cycles:
            out[str(n)] = psnr(pixels, current)
    return out


# -- the run ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.0018, 0.0067, 0.025, 0.1, 0.4])
    parser.add_argument("--budget-minutes", type=float, default=30.0, help="training time per rate point (default: 30)")
    parser.add_argument("--entropy-model", choices=("factorized", "hyperprior"), default="factorized")
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
        args.lambdas, args.budget_minutes, args.cycles = args.lambdas[1:3], 1.0, [1, 2, 5]
    photos = load_photos(EVALUATION[:2] if args.quick else EVALUATION)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    flow_rows: dict[str, list[dict[str, float]]] = {name: [] for name in photos}
    codecs: list[tuple[float, ImageCodec]] = []
    for lmbda in args.lambdas:
        path = work / f"flow-{args.entropy_model}-{lmbda:g}.nfc"
        settings = TrainingSettings(lmbda=lmbda, steps=10**7, time_budget_s=60 * args.budget_minutes)
        if not path.exists():
            run_train(path, None, CodecConfig(entropy_model=args.entropy_model), settings, device=args.device)
        codec = ImageCodec.load(path, args.device)
        codecs.append((lmbda, codec))
        def flow_entries(pixels: np.ndarray, data: bytes, decoded: np.ndarray, codec: ImageCodec = codec) -> dict[str, float]:
            return ms_ssim_entry(pixels, data, decoded) | {"estimated_bpp": codec.estimated_bpp(data)}

        for row in evaluate(codec, photos, flow_entries):
            flow_rows[row["image"]].append({"setting": lmbda, **row})
    results: dict[str, dict[str, list[dict[str, float]]]] = {"flow": flow_rows}
    classical = classical_codecs()
    for name, codec in classical.items():
        results[name] = sweep(name, codec, photos)

    def points(codec: str, image: str) -> list[tuple[float, float]]:
        return [(r["bpp"], r["psnr"]) for r in results[codec][image]]

    matched = {codec: {str(rate): mean_finite([interpolate_psnr(points(codec, im), rate) for im in photos])
                       for rate in MATCHED_RATES} for codec in results}
    bd = {anchor: mean_finite([bd_rate(points(anchor, im), points("flow", im)) for im in photos])
          for anchor in classical if anchor in ("JPEG", "WebP", "JPEG 2000", "AVIF", "HEIF")}
    timing = {codec: {"encode_s_per_mp": float(np.mean([r["encode_s_per_mp"] for im in photos for r in results[codec][im]])),
                      "decode_s_per_mp": float(np.mean([r["decode_s_per_mp"] for im in photos for r in results[codec][im]]))}
              for codec in results}

    # re-compression at the flow codec's rate nearest 1 bpp, every codec at the setting nearest it
    recompression: dict[str, dict[str, Any]] = {}
    for name, pixels in photos.items():
        best = min(range(len(codecs)), key=lambda i: abs(math.log(flow_rows[name][i]["bpp"])))  # nearest 1 bpp
        lmbda, flow = codecs[best]
        target = flow_rows[name][best]["bpp"]
        per_codec = {"flow": {"setting": lmbda, "bpp": target,
                              "psnr": recompress(flow.encode, flow.decode, pixels, args.cycles)}}
        for codec_name, codec in classical.items():
            rows = results[codec_name][name]
            row = min(rows, key=lambda r: abs(math.log(r["bpp"]) - math.log(target)))
            per_codec[codec_name] = {"setting": row["setting"], "bpp": row["bpp"],
                                     "psnr": recompress(lambda p, s=row["setting"], c=codec: c["encode"](p, s), codec["decode"],
                                                        pixels, args.cycles)}
        recompression[name] = per_codec
    loss = {codec: {str(n): float(np.mean([recompression[im][codec]["psnr"][str(n)] - recompression[im][codec]["psnr"]["1"]
                                            for im in photos])) for n in args.cycles} for codec in results}
    size_vs_estimate = float(np.mean([r["bpp"] / r["estimated_bpp"] - 1 for im in photos for r in flow_rows[im]]))

    summary = {"settings": vars(args), "photos": list(photos), "command": " ".join(sys.argv),
               "matched_psnr": matched, "bd_rate_flow_vs": bd, "timing": timing, "recompression": recompression,
               "recompression_loss_db": loss, "file_size_over_estimate": size_vs_estimate, "curves": results}
    write_json(out / "compression.json", summary)
    _plot(results, loss, photos, out / "compression.png")
    _print_tables(matched, bd, loss, timing, size_vs_estimate)
    return 0


def _plot(results, loss, photos, path: Path) -> None:
    plt = pyplot()
    fig, (rd, rc) = plt.subplots(1, 2, figsize=(12, 4.5))
    for codec, per_image in results.items():
        bpp = np.mean([[r["bpp"] for r in per_image[im]] for im in photos], axis=0)
        quality = np.mean([[r["psnr"] for r in per_image[im]] for im in photos], axis=0)
        order = np.argsort(bpp)
        rd.plot(bpp[order], quality[order], "o-" if codec == "flow" else ".-", label=codec, lw=2.5 if codec == "flow" else 1)
        cycles = [int(n) for n in loss[codec]]
        rc.plot(cycles, [loss[codec][str(n)] for n in cycles], "o-", label=codec)
    rd.set(xscale="log", xlabel="bits per pixel (file size)", ylabel="PSNR (dB), mean over photos", title="rate–distortion")
    rc.set(xscale="log", xlabel="decode → encode cycles N", ylabel="PSNR change since N = 1 (dB)", title="re-compression")
    rd.grid(alpha=0.3)
    rc.grid(alpha=0.3)
    rd.legend()
    rc.legend()
    save_figure(fig, path)


def _print_tables(matched, bd, loss, timing, size_vs_estimate) -> None:
    print("PSNR (dB) at matched rates (mean over photos; interpolated in log rate)")
    print(f"{'codec':<10}" + "".join(f"{r:>9g} bpp" for r in MATCHED_RATES))
    for codec, row in matched.items():
        print(f"{codec:<10}" + "".join(f"{row[str(r)]:>13.2f}" for r in MATCHED_RATES))
    print("\nBD-rate of the flow codec (negative: fewer bits at equal PSNR): " + ", ".join(f"vs {k} {v:+.1f} %" for k, v in bd.items()))
    print(f"flow file size over its model's estimate: {100 * size_vs_estimate:+.2f} %")
    cycles = list(next(iter(loss.values())))
    print("\nre-compression: PSNR change since the first decode (dB)")
    print(f"{'codec':<10}" + "".join(f"{'N=' + n:>9}" for n in cycles))
    for codec, row in loss.items():
        print(f"{codec:<10}" + "".join(f"{row[n]:>9.3f}" for n in cycles))
    print("\nencode / decode s per megapixel (CPU)")
    for codec, row in timing.items():
        print(f"{codec:<10}{row['encode_s_per_mp']:>9.3f}{row['decode_s_per_mp']:>9.3f}")


if __name__ == "__main__":
    sys.exit(main())
