"""Lossy image compression with normalizing flows (Helminger et al. 2021): a flow codec with a
quantized latent, CompressAI entropy models and real bitstreams.

- :class:`~nfapps.codec.codec.ImageCodec`: encode/decode pixels and files with a trained codec.
- :class:`~nfapps.codec.model.FlowCodec`, :class:`~nfapps.codec.model.CodecConfig`: the model.
- :func:`~nfapps.codec.train.train_codec`: training on patches, with resumable checkpoints, for
  an :class:`~nfapps.codec.distortion.Objective` R + λ·D, which the encoder also minimises
  per image (:mod:`~nfapps.codec.refine`).
- :mod:`~nfapps.codec.bitstream`: the .nfic file format; :mod:`~nfapps.codec.backend`: how
  CompressAI is imported.
"""

from .bitstream import BitstreamError
from .codec import ImageCodec
from .distortion import Objective
from .images import ImageError, ms_ssim, psnr, read_image, write_image
from .model import CodecConfig, FlowCodec, entropy_model_for
from .train import TrainingSettings, train_codec

__all__ = ["BitstreamError", "CodecConfig", "FlowCodec", "ImageCodec", "ImageError", "Objective", "TrainingSettings",
           "entropy_model_for", "ms_ssim", "psnr", "read_image", "train_codec", "write_image"]
