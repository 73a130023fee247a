"""Turn a user's device request ("auto", "cpu", "cuda", "cuda:1", a torch.device) into a torch.device."""

from __future__ import annotations

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


__all__ = ["resolve_device"]
