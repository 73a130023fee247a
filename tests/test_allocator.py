import ctypes
import sys

import pytest

from nfapps import allocator
from nfapps.allocator import keep_freed_memory


def _has_glibc_mallopt() -> bool:
    try:
        return sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "mallopt")
    except OSError:
        return False


@pytest.mark.skipif(not _has_glibc_mallopt(), reason="glibc's mallopt is not available on this platform")
def test_glibc_accepts_the_thresholds():
    assert keep_freed_memory() is True


def test_does_nothing_off_linux(monkeypatch):
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert keep_freed_memory() is False
