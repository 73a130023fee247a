"""Save a flow to one file and load it back without the code that built it.

A saved flow is an :mod:`nfapps.atomic` container of kind ``"flow"`` whose payload is::

    {"config": {"builder": name, "kwargs": {...}},   # how to rebuild it (flow.config)
     "state_dict": {...},                            # its weights and buffers, on the CPU
     "dtype": "float32",                             # floating dtype of its parameters
     "training": bool,                               # train/eval mode when saved
     "nfapps_version": "0.1.0", "torch_version": "2.13.0"}

Loading looks the builder name up in :data:`nfapps.registry.BUILDERS`, calls it with the saved
keyword arguments, and loads the weights strictly, so ``load(save(flow))`` computes exactly the
same ``log_prob``.
"""

from __future__ import annotations

import os

import torch

from .atomic import FlowFileError, dump, load_container
from .device import resolve_device
from .flow import Flow
from .registry import BUILDERS


def save(flow: Flow, path: str | os.PathLike) -> None:
    """Write ``flow`` (its builder, build arguments and weights) to ``path``, atomically.

    The flow must come from a registered builder (``nfapps.builders.*`` or a function decorated
    with :func:`nfapps.register_builder`), because that is what :func:`load` calls to rebuild it.
    """
    dump(flow_payload(flow), path, "flow")


def flow_payload(flow: Flow) -> dict:
    """What :func:`save` stores of a flow, as a plain dict (for files that embed a flow)."""
    from . import __version__  # here, not at import time: nfapps/__init__ imports this module

    config = getattr(flow, "config", None)
    if not isinstance(config, dict) or "builder" not in config:
        raise ValueError(
            f"cannot save this {type(flow).__name__}: it was not built by a registered builder, so "
            "nfapps.load could not rebuild it; build it with nfapps.builders (RealNVP, NSF, MAF, …) or "
            "decorate your own builder function with @nfapps.register_builder('Name')"
        )
    dtype = next((p.dtype for p in flow.parameters() if p.is_floating_point()), torch.get_default_dtype())
    payload = {
        "config": config,
        "state_dict": {k: v.detach().cpu() for k, v in flow.state_dict().items()},
        "dtype": str(dtype).removeprefix("torch."),
        "training": bool(flow.training),
        "nfapps_version": __version__,
        "torch_version": str(torch.__version__),
    }
    return payload


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> Flow:
    """Rebuild the flow saved at ``path`` with its builder, load its weights, and move it to ``device``."""
    return flow_from_payload(load_container(path, "flow"), path, device)


def flow_from_payload(payload: dict, path: str | os.PathLike, device: str | torch.device = "cpu") -> Flow:
    """Rebuild a flow from :func:`flow_payload`'s dict; ``path`` names the file in error messages."""
    try:
        config, state, dtype_name = payload["config"], payload["state_dict"], payload["dtype"]
        name, kwargs = config["builder"], config["kwargs"]
    except (KeyError, TypeError):
        raise FlowFileError(f"{path} is an nfapps flow file without a builder config or weights; re-save the flow") from None
    builder = BUILDERS.get(name)
    if builder is None:
        known = ", ".join(sorted(BUILDERS)) or "none"
        raise ValueError(
            f"{path} holds a flow built by {name!r}, which is not registered in this session "
            f"(registered: {known}); import the module that defines it with @register_builder({name!r}) "
            "before calling nfapps.load"
        )
    try:
        flow = builder(**kwargs)
    except TypeError as err:
        raise ValueError(
            f"{path}: builder {name!r} no longer accepts the saved arguments ({err}); it was saved with "
            f"nfapps {payload.get('nfapps_version', '?')} — load it with that version"
        ) from None
    dtype = getattr(torch, dtype_name, None)
    if isinstance(dtype, torch.dtype):
        flow = flow.to(dtype)
    try:
        flow.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1].strip()
        raise FlowFileError(
            f"{path}: the saved weights do not fit the flow that {name!r} builds now ({first}); "
            f"it was saved with nfapps {payload.get('nfapps_version', '?')} — load it with that version"
        ) from None
    flow.train(bool(payload.get("training", False)))
    return flow.to(resolve_device(device))


__all__ = ["save", "load", "flow_payload", "flow_from_payload"]
