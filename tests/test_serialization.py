"""save/load round trips exactly; every kind of unusable file gives one clear FlowFileError."""

from __future__ import annotations

import pytest
import torch

import nfapps.atomic as atomic
from nfapps import registry
from nfapps.atomic import FlowFileError, dump, load_container, write_bytes_atomic
from nfapps.builders import NSF, RealNVP
from nfapps.distributions import StandardNormal
from nfapps.flow import Flow
from nfapps.serialization import load, save
from nfapps.transforms.base import Compose
from nfapps.training import fit

from conftest import perturb



@pytest.mark.parametrize(
    "make, dtype",
    [
        (lambda: RealNVP(3, transforms=2, hidden=(8,)), torch.float32),
        (lambda: NSF(2, context=2, transforms=2, hidden=(8,), bins=4), torch.float32),
        (lambda: RealNVP(2, context=1, transforms=2, hidden=(8,), randperm=True), torch.float64),
        (lambda: NSF(5, transforms=4, hidden=(8,), bins=4, bounded=True, mask="antichain", pre_map=8, sampling="forward"),
         torch.float32),
    ],
)
def test_round_trip_gives_identical_log_prob(tmp_path, make, dtype):
    flow = make().to(dtype)
    perturb(flow)
    flow.eval()
    features, context = flow.event_shape[0], flow.context_features
    x = torch.randn(16, features, dtype=dtype)
    if flow.config["kwargs"].get("bounded"):
        x = torch.rand(16, features, dtype=dtype)
    c = torch.randn(16, context, dtype=dtype) if context else None
    save(flow, tmp_path / "flow.nfapps")
    loaded = load(tmp_path / "flow.nfapps")
    assert isinstance(loaded, Flow) and loaded.config == flow.config and not loaded.training
    assert torch.equal(loaded.log_prob(x, c), flow.log_prob(x, c))


def test_trained_flow_round_trip(tmp_path):
    flow = RealNVP(2, transforms=2, hidden=(8,))
    fit(flow, torch.randn(128, 2) + 2, epochs=2, progress=False, device="cpu")
    save(flow, tmp_path / "f.nfapps")
    x = torch.randn(8, 2)
    assert torch.equal(load(tmp_path / "f.nfapps", device="cpu").log_prob(x), flow.log_prob(x))


def test_flow_without_builder_cannot_be_saved(tmp_path):
    with pytest.raises(ValueError, match="not built by a registered builder"):
        save(Flow(Compose(), StandardNormal(2)), tmp_path / "f.nfapps")
    assert not (tmp_path / "f.nfapps").exists()


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "flow.nfapps"
    save(RealNVP(2, transforms=1, hidden=(4,)), path)
    return path


def damage(path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "header cut":
        data = data[:20]
    elif how == "empty":
        data = bytearray()
    elif how == "flipped byte":
        data[len(data) // 2] ^= 0x01
    elif how == "trailing bytes":
        data += b"\0"
    elif how == "newer version":
        data[7] = atomic.FORMAT_VERSION + 1
    elif how == "text file":
        data = bytearray(b"features,x1,x2\n1,2,3\n")
    elif how == "plain torch.save":
        torch.save({"state_dict": {}}, path)
        return
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "how, match",
    [
        ("truncated", "is truncated"),
        ("header cut", "is truncated"),
        ("empty", "is truncated"),
        ("flipped byte", "is corrupted \\(checksum mismatch\\)"),
        ("trailing bytes", "is corrupted"),
        ("newer version", "newer nfapps .* upgrade nfapps"),
        ("text file", "is not an nfapps file"),
        ("plain torch.save", "is not an nfapps file"),
    ],
)
def test_unusable_files_give_one_clear_error(saved, how, match):
    damage(saved, how)
    with pytest.raises(FlowFileError, match=match) as err:
        load(saved)
    message = str(err.value)
    assert str(saved) in message and "\n" not in message
    assert isinstance(err.value, ValueError)


def test_wrong_kind_is_refused_both_ways(tmp_path, saved):
    checkpoint = tmp_path / "ck.nfapps"
    fit(RealNVP(2, transforms=1, hidden=(4,)), torch.randn(64, 2), epochs=1, progress=False, device="cpu", checkpoint=checkpoint)
    with pytest.raises(FlowFileError, match="is a training checkpoint .*, not a saved flow"):
        load(checkpoint)
    with pytest.raises(FlowFileError, match="is a saved flow .*, not a training checkpoint"):
        fit(RealNVP(2, transforms=1, hidden=(4,)), torch.randn(64, 2), epochs=2, progress=False, device="cpu", checkpoint=saved)


def test_unknown_builder(saved, monkeypatch):
    monkeypatch.delitem(registry.BUILDERS, "RealNVP")
    with pytest.raises(ValueError, match="built by 'RealNVP', which is not registered .*@register_builder"):
        load(saved)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "nowhere.nfapps")


def test_container_round_trip_and_plain_types_only(tmp_path):
    obj = {"a": torch.arange(3), "b": [1, 2.5, "x", None, (True,)], "c": {"inf": float("inf")}}
    dump(obj, tmp_path / "c", "checkpoint")
    back = load_container(tmp_path / "c", "checkpoint")
    assert torch.equal(back["a"], obj["a"]) and back["b"] == obj["b"] and back["c"] == obj["c"]
    with pytest.raises(TypeError, match=r"obj\['bad'\] is a function"):
        dump({"bad": lambda: 0}, tmp_path / "d", "flow")
    with pytest.raises(ValueError, match="unknown container kind"):
        dump({}, tmp_path / "d", "pickle")
    assert not (tmp_path / "d").exists()


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    write_bytes_atomic(path, b"old")

    def fail(fd):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        write_bytes_atomic(path, b"new contents")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
