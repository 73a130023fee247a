"""CompressAI, imported in the one place that knows how it is installed.

CompressAI provides the entropy models (``EntropyBottleneck``, ``GaussianConditional``) and the
rANS coder. Its package ``__init__`` also imports ``torchvision.transforms`` — only to fill a
registry of data transforms that nfapps never uses — and its declared requirements pull
torchvision, which on a CPU machine means a multi-GB CUDA build of torch. So nfapps installs it
with ``pip install --no-deps compressai`` plus the packages it really imports (nfapps'
dependencies), and, where the real ``torchvision`` cannot be imported (absent, or a build that
does not match the installed torch), puts an empty stand-in for ``torchvision.transforms`` in
``sys.modules`` before importing CompressAI. Where torchvision loads (a CUDA machine with a
matching pair), the real one is used and nothing is stood in.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

INSTALL_HINT = "install it with: pip install --no-deps compressai==1.2.8 (see the README's install section)"

#: The name under which the stand-in is registered; tests look for it.
STAND_IN_MARK = "__nfapps_stand_in__"


def _torchvision_importable() -> bool:
    try:
        importlib.import_module("torchvision.transforms")
    except Exception:  # noqa: BLE001 - any failure (missing, or 'operator torchvision::nms does not exist')
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]  # drop a half-imported real package
        return False
    return True


def _stand_in_torchvision() -> None:
    """Register empty ``torchvision`` and ``torchvision.transforms`` modules (no classes, so
    CompressAI's transform registry simply has no torchvision entries)."""
    package = types.ModuleType("torchvision")
    package.__path__ = []  # a package, so the submodule import resolves from sys.modules
    transforms = types.ModuleType("torchvision.transforms")
    for module in (package, transforms):
        setattr(module, STAND_IN_MARK, True)
    package.transforms = transforms
    sys.modules["torchvision"] = package
    sys.modules["torchvision.transforms"] = transforms


def load_compressai() -> Any:
    """The ``compressai`` module, importing it (with the stand-in where needed) on first use."""
    if "compressai" in sys.modules:
        return sys.modules["compressai"]
    if importlib.util.find_spec("compressai") is None:
        raise ImportError(f"the flow codec needs CompressAI, which is not installed; {INSTALL_HINT}")
    if not _torchvision_importable():
        _stand_in_torchvision()
    try:
        return importlib.import_module("compressai")
    except ImportError as error:
        raise ImportError(f"CompressAI is installed but cannot be imported ({error}); {INSTALL_HINT}, "
                          "then pip install -e . for the packages it imports") from error


def entropy_models() -> Any:
    """``compressai.entropy_models``: EntropyBottleneck and GaussianConditional."""
    load_compressai()
    return importlib.import_module("compressai.entropy_models")


def uses_stand_in() -> bool:
    """Whether torchvision is the stand-in (so CompressAI's torchvision transforms are absent)."""
    return bool(getattr(sys.modules.get("torchvision"), STAND_IN_MARK, False))
