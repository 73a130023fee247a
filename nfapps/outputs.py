"""Result files that jobs write: plain JSON (no NaN), PNG plots (Agg), both written atomically."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_bytes_atomic


def finite(obj: Any) -> Any:
    """Plain JSON (no NaN or infinity: they become null), tuples and arrays as lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return finite(obj.tolist())
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return finite(obj.item())
    return obj


def write_json(path: str | Path, obj: dict[str, Any]) -> None:
    """``obj`` as indented JSON at ``path``, atomically."""
    write_bytes_atomic(path, (json.dumps(finite(obj), indent=2, allow_nan=False) + "\n").encode())


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> None:
    """Write ``fig`` as a PNG at ``path``, atomically, and close it."""
    plt = pyplot()
    buffer = io.BytesIO()
    if fig.get_layout_engine() is None:  # a figure that chose its own layout keeps it
        fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())


__all__ = ["finite", "write_json", "pyplot", "save_figure"]
