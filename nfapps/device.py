"""Turn a user's device request ("auto", "cpu", "cuda", "cuda:1", a torch.device) into a torch.device;
run arithmetic that two programs must reproduce bit for bit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The device to run on.

    ``"auto"`` (or ``None``) is CUDA when it is available and the CPU otherwise; anything else
    is taken literally. Asking for CUDA (``"cuda"``, ``"cuda:1"``) on a machine without it, or
    for a GPU index the machine does not have, raises a ``ValueError`` that says what exists.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, torch.device):
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:<index>' ({err})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(device)!r} was requested but CUDA is not available on this machine "
                "(no GPU, or torch was installed without CUDA); use device='cpu' or device='auto'"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"device {str(device)!r} was requested but this machine has {count} CUDA device(s) "
                f"(cuda:0 … cuda:{count - 1})"
            )
    return device


@contextmanager
def reproducible_arithmetic() -> Iterator[None]:
    """Inside: one CPU thread and deterministic cuDNN kernels, restored on exit.

    A float32 convolution's result depends in its last bits on how the work is split between
    threads (measured: a codec's decode with 2 threads differed from the 1-thread one in some
    pixels) and on which cuDNN algorithm runs. Where an encoder and a decoder must compute the
    same numbers — an entropy coder's tables chosen from computed scales, where one scale on the
    other side of a table boundary desynchronises the rest of the stream — both run inside this,
    so the result depends on the machine's kind, not on its thread count or a kernel benchmark.
    Also a decorator: ``@reproducible_arithmetic()``."""
    saved = torch.get_num_threads(), torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.set_num_threads(1)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        threads, torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved
        torch.set_num_threads(threads)


__all__ = ["reproducible_arithmetic", "resolve_device"]
