"""The codec's jobs behind ``nfapps codec train | evaluate``: folders of images in, files out."""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..outputs import write_json
from .codec import ImageCodec
from .images import IMAGE_SUFFIXES, ImageError, ms_ssim, psnr, read_image
from .baseline import BaselineConfig
from .model import CodecConfig
from .photos import EVALUATION, TRAINING, load_photos
from .train import TrainingSettings, train_codec

logger = logging.getLogger(__name__)


def read_folder(folder: str | os.PathLike | None, default: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The images of a folder (sorted by name), or the bundled photos ``default`` when None."""
    if folder is None:
        return load_photos(default)
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return {p.stem: read_image(p) for p in files}


def run_train(out: str | os.PathLike, images: str | None = None, config: CodecConfig | BaselineConfig | None = None,
              settings: TrainingSettings | None = None, device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Train a codec and write it to ``out`` (plus ``out``.ckpt, resumed when it exists, and
    ``out``.json with the training curve)."""
    out, settings = Path(out), settings or TrainingSettings()
    out.parent.mkdir(parents=True, exist_ok=True)
    photos = read_folder(images, TRAINING)
    model, history = train_codec(list(photos.values()), config, settings, checkpoint=out.with_suffix(out.suffix + ".ckpt"),
                                 device=device, progress=progress)
    codec = ImageCodec(model, objective=settings.objective)
    codec.save(out)
    tail = history[-100:]
    summary = {"model": str(out), "identifier": codec.identifier.hex(), "training_images": sorted(photos),
               "steps": len(history), "final_bpp": float(np.mean([h["bpp"] for h in tail])) if tail else math.nan,
               "final_psnr": float(np.mean([h["psnr"] for h in tail])) if tail else math.nan,
               **({"final_ms_ssim": float(np.mean([h["ms_ssim"] for h in tail]))} if tail and "ms_ssim" in tail[0] else {}),
               "distortion": settings.distortion,
               "config": asdict(model.config), "history": history}
    write_json(out.with_suffix(out.suffix + ".json"), summary)
    return {k: v for k, v in summary.items() if k != "history"}


def measure(encode: Callable[[np.ndarray], bytes], decode: Callable[[bytes], np.ndarray], pixels: np.ndarray,
            extra: Callable[[np.ndarray, bytes, np.ndarray], dict[str, Any]] | None = None) -> dict[str, Any]:
    """One image through any codec: bytes, bits per pixel of the file, PSNR, MS-SSIM (NaN for
    images too small for it), encode and decode seconds per megapixel, and
    ``extra(pixels, data, decoded)``'s entries."""
    start = time.perf_counter()
    data = encode(pixels)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    decoded = decode(data)
    decode_s = time.perf_counter() - start
    megapixels = pixels.shape[0] * pixels.shape[1] / 1e6
    row = {"bytes": len(data), "bpp": 8 * len(data) / (megapixels * 1e6), "psnr": psnr(pixels, decoded),
           "ms_ssim": ms_ssim(pixels, decoded),
           "encode_s_per_mp": encode_s / megapixels, "decode_s_per_mp": decode_s / megapixels}
    return row | (extra(pixels, data, decoded) if extra else {})


def evaluate(codec: ImageCodec, photos: dict[str, np.ndarray],
             extra: Callable[[np.ndarray, bytes, np.ndarray], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Per image: :func:`measure` with the flow codec, whether its encoding settled and what its
    latent refinement did (J before and after; None when it did not refine)."""
    rows = []
    for name, pixels in photos.items():
        row = measure(codec.encode, codec.decode, pixels, extra)
        rows.append({"image": name, "height": pixels.shape[0], "width": pixels.shape[1], **row, "settled": codec.last_settled,
                     "refinement": codec.last_refinement})
    return rows


def run_evaluate(model: str | os.PathLike, out: str | os.PathLike, images: str | None = None, device: str = "auto",
                 refine: int | None = None) -> dict[str, Any]:
    """Evaluate a saved codec on a folder (default: the bundled evaluation photos); writes ``out``
    (JSON). ``refine``: the encoder's latent optimisation steps (None: the codec's default)."""
    codec = ImageCodec.load(model, device, refine=refine)
    rows = evaluate(codec, read_folder(images, EVALUATION))
    summary = {"model": str(model), "identifier": codec.identifier.hex(), "device": str(codec.device), "refine": codec.refine, "images": rows,
               "mean_bpp": float(np.mean([r["bpp"] for r in rows])), "mean_psnr": float(np.mean([r["psnr"] for r in rows])),
               "mean_ms_ssim": float(np.mean([r["ms_ssim"] for r in rows]))}  # NaN (null) when an image is too small
    write_json(out, summary)
    return summary
