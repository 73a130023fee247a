"""nfapps.anomaly.readers: events from ROOT, HDF5 (plain and pandas layouts) and .npy files."""

import importlib.util
import logging
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from nfapps.anomaly.readers import Events, EventsError, invariant_mass, read_events

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ZMUMU = SHARED / "root" / "uproot-Zmumu.root"
HZZ = SHARED / "root" / "uproot-HZZ.root"
LHCO_TEST = SHARED / "lhco-rd-sr" / "innerdata_test.npy"
LHCO_COLUMNS = ["mjj", "mj1", "delta_mj", "tau21_1", "tau21_2", "label"]
MUONS = "Muon_E, Muon_Px, Muon_Py, Muon_Pz"


needs_uproot = pytest.mark.skipif(importlib.util.find_spec("uproot") is None or importlib.util.find_spec("awkward") is None,
                                  reason="reading ROOT files needs uproot and awkward (pip install uproot)")


def shared(path: Path, root: bool = False):
    """Skip unless the shared test file exists (and, for ROOT files, uproot is installed)."""
    absent = pytest.mark.skipif(not path.exists(), reason=f"shared test data {path} is absent (only on the project's CI machine)")
    return (lambda test: needs_uproot(absent(test))) if root else absent


def jets(n: int = 257, seed: int = 0) -> dict[str, np.ndarray]:
    """LHCO R&D-like high-level jet columns (GeV), with a 0/1 label."""
    rng = np.random.default_rng(seed)
    frame = {}
    for j, sign in ((1, 1.0), (2, -1.0)):
        frame[f"pxj{j}"] = sign * rng.uniform(1200, 1800, n)
        frame[f"pyj{j}"] = rng.normal(0, 100, n)
        frame[f"pzj{j}"] = rng.normal(0, 800, n)
        frame[f"mj{j}"] = rng.uniform(20, 600, n)
        taus = np.sort(rng.uniform(0.05, 1.0, (n, 3)), axis=1)[:, ::-1]
        for k in range(3):
            frame[f"tau{k + 1}j{j}"] = taus[:, k]
    frame["label"] = rng.integers(0, 2, n)
    return frame


def dijet_mass(f: dict[str, np.ndarray]) -> np.ndarray:
    e = [np.sqrt(f[f"mj{j}"] ** 2 + f[f"pxj{j}"] ** 2 + f[f"pyj{j}"] ** 2 + f[f"pzj{j}"] ** 2) for j in (1, 2)]
    p = [f[f"p{c}j1"] + f[f"p{c}j2"] for c in "xyz"]
    return np.sqrt((e[0] + e[1]) ** 2 - p[0] ** 2 - p[1] ** 2 - p[2] ** 2)


JET_ALIASES = {f"ej{j}": f"sqrt(mj{j}**2 + pxj{j}**2 + pyj{j}**2 + pzj{j}**2)" for j in (1, 2)}
MJJ = "mjj=invariant_mass(ej1 + ej2, pxj1 + pxj2, pyj1 + pyj2, pzj1 + pzj2)"


def check_jets(events: Events, frame: dict[str, np.ndarray], rows: int | None = None) -> None:
    rows = len(frame["label"]) if rows is None else rows
    assert len(events) == rows and events.names == ["mj1", "tau21j1"] and events.mass_name == "mjj"
    np.testing.assert_allclose(events.mass, dijet_mass(frame)[:rows], rtol=1e-12)
    np.testing.assert_array_equal(events.features[:, 0], frame["mj1"][:rows])
    np.testing.assert_allclose(events.features[:, 1], (frame["tau2j1"] / frame["tau1j1"])[:rows], rtol=1e-12)
    np.testing.assert_array_equal(events.labels, frame["label"][:rows])
    assert events.mass.dtype == events.features.dtype == np.float64 and events.labels.dtype == np.int64


def read_jets(path: Path, **kwargs) -> Events:
    return read_events(path, MJJ, ["mj1", "tau21j1=tau2j1/tau1j1"], label="label", aliases=JET_ALIASES, **kwargs)


def raises(match: str, *args, **kwargs) -> str:
    """read_events(*args, **kwargs) raises EventsError with a one-line message containing match."""
    with pytest.raises(EventsError) as info:
        read_events(*args, **kwargs)
    message = str(info.value)
    assert match in message and "\n" not in message, message
    return message


# ---------------------------------------------------------------------------------- Events


def test_events_len_and_select():
    ev = Events(np.arange(5.0), np.arange(10.0).reshape(5, 2), ["a", "b"], "m", np.array([0, 1, 0, 1, 1]), "f.h5")
    assert len(ev) == 5
    picked = ev.select(ev.labels == 1)
    assert len(picked) == 3 and picked.mass.tolist() == [1.0, 3.0, 4.0] and picked.labels.tolist() == [1, 1, 1]
    assert picked.names == ["a", "b"] and picked.mass_name == "m" and picked.source == "f.h5"
    by_index = ev.select(np.array([4, 0]))
    assert by_index.features.tolist() == [[8.0, 9.0], [0.0, 1.0]]
    by_index.mass[0] = -1.0
    assert ev.mass[4] == 4.0  # a copy
    assert len(ev.select([])) == 0
    with pytest.raises(EventsError, match=r"boolean mask has shape \(3,\), expected \(5,\)"):
        ev.select(np.ones(3, dtype=bool))
    with pytest.raises(EventsError, match="3 features but 2 names"):
        Events(np.zeros(2), np.zeros((2, 3)), ["a", "b"], "m")


def test_invariant_mass_of_flat_four_momenta():
    e, px, py, pz = np.array([5.0, 1.0]), np.array([3.0, 1.0]), np.array([0.0, 0.0]), np.array([0.0, 0.5])
    np.testing.assert_allclose(invariant_mass(e, px, py, pz), [4.0, 0.0])  # E² < p² (rounding) clipped to 0


# ---------------------------------------------------------------------------------- ROOT, real files


@shared(ZMUMU, root=True)
def test_zmumu_branches_and_expressions():
    ev = read_events(ZMUMU, "M", ["pt1", "sqrt(px1**2+py1**2)", "mcalc=invariant_mass(E1+E2, px1+px2, py1+py2, pz1+pz2)",
                                  "eta(px2, py2, pz2)"])
    assert len(ev) == 2304 and ev.mass_name == "M" and ev.source == str(ZMUMU) and ev.labels is None
    assert ev.names == ["pt1", "sqrt(px1**2+py1**2)", "mcalc", "eta(px2, py2, pz2)"]
    assert ev.features.shape == (2304, 4) and ev.features.dtype == np.float64
    import uproot

    with uproot.open(ZMUMU) as f:
        raw = f["events"].arrays(["pt1", "px1", "py1", "px2", "py2", "pz2"], library="np")
    np.testing.assert_array_equal(ev.features[:, 0], raw["pt1"])
    # (The file's pt1 disagrees with its px1, py1 on a fifth of the events; the expression follows px, py.)
    np.testing.assert_allclose(ev.features[:, 1], np.hypot(raw["px1"], raw["py1"]), rtol=1e-12)
    np.testing.assert_allclose(ev.features[:, 3], np.arcsinh(raw["pz2"] / np.hypot(raw["px2"], raw["py2"])), rtol=1e-12)
    relative = np.abs(ev.features[:, 2] - ev.mass) / ev.mass
    assert np.mean(relative < 1e-3) > 0.95
    assert 0.8 < np.mean((ev.mass > 60) & (ev.mass < 120)) < 0.95  # the Z peak


@shared(ZMUMU, root=True)
def test_zmumu_chunks_max_events_aliases_and_cycle():
    whole = read_events(ZMUMU, "M", ["pt1", "ptsum", "twice", "s=ptsum + twice"], aliases={"ptsum": "pt1 + pt2", "twice": "2 * ptsum"})
    np.testing.assert_allclose(whole.features[:, 3], 3 * (whole.features[:, 0] + read_events(ZMUMU, "M", ["pt2"]).features[:, 0]))
    chunked = read_events(ZMUMU, "M", ["pt1", "ptsum", "twice", "s=ptsum + twice"], tree="events;1", step_size=97,
                          aliases={"ptsum": "pt1 + pt2", "twice": "2 * ptsum"})
    np.testing.assert_array_equal(chunked.features, whole.features)
    first = read_events(ZMUMU, "M", ["pt1"], step_size=97, max_events=500)
    assert len(first) == 500
    np.testing.assert_array_equal(first.features[:, 0], whole.features[:500, 0])
    assert len(read_events(ZMUMU, "M", ["pt1"], max_events=10**9)) == 2304
    raises("aliases refer to each other in a cycle: a -> b -> a", ZMUMU, "M", ["a"], aliases={"a": "b + 1", "b": "2 * a"})


@shared(HZZ, root=True)
def test_hzz_leading_muons_mass_peaks_at_z(caplog):
    import awkward as ak
    import uproot

    with uproot.open(HZZ) as f:
        muons = f["events"].arrays(["Muon_Px", "NMuon"])
    two = ak.to_numpy(muons["NMuon"]) >= 2
    first_short = int(np.argmin(two))
    raises(f"mass 'mll=invariant_mass({MUONS}, 2)' is undefined at event {first_short} (too few objects); "
           "pass drop_incomplete=True", HZZ, f"mll=invariant_mass({MUONS}, 2)", ["Muon_Px[:, 0]"])
    with caplog.at_level(logging.WARNING, logger="nfapps.anomaly.readers"):
        ev = read_events(HZZ, f"mll=invariant_mass({MUONS}, 2)", ["Muon_Px[:, 0]", "count(Muon_Px)", "pt(Muon_Px, Muon_Py)[:, 1]"],
                         drop_incomplete=True)
    assert len(ev) == two.sum() == 2421 - (~two).sum()
    assert f"dropped {(~two).sum()} events" in caplog.text
    np.testing.assert_allclose(ev.features[:, 0], ak.to_numpy(muons["Muon_Px"][two][:, 0]), rtol=1e-6)
    np.testing.assert_array_equal(ev.features[:, 1], ak.to_numpy(muons["NMuon"][two]))
    counts, edges = np.histogram(ev.mass, bins=np.arange(0, 200, 5))
    assert 85 <= edges[np.argmax(counts)] < 95 and 85 < np.median(ev.mass) < 97
    chunked = read_events(HZZ, f"mll=invariant_mass({MUONS}, 2)", ["Muon_Px[:, 0]", "count(Muon_Px)", "pt(Muon_Px, Muon_Py)[:, 1]"],
                          drop_incomplete=True, step_size=97)
    np.testing.assert_array_equal(chunked.mass, ev.mass)
    np.testing.assert_array_equal(chunked.features, ev.features)


@shared(HZZ, root=True)
def test_hzz_jagged_mistakes():
    raises("feature 'Muon_Px': it has several values per event (a jagged branch); pick one object, e.g. Muon_Px[:, 0]",
           HZZ, "MET_px", ["Muon_Px"])
    raises("invariant_mass of jagged arrays needs n", HZZ, f"invariant_mass({MUONS})", ["MET_py"])
    raises("only per-event object indexing like Muon_Px[:, 0] is allowed, not 'Muon_Px[0]'", HZZ, "MET_px", ["Muon_Px[0]"])
    raises("count() needs a jagged branch", HZZ, "MET_px", ["count(MET_py)"])


@shared(ZMUMU, root=True)
@pytest.mark.parametrize(("feature", "message"), [
    ("px3", "(tree 'events'): no branch 'px3'; did you mean 'px2' or 'px1'?"),
    ("sqrt(pxx1**2 + py1**2)", "no branch 'pxx1' (in feature 'sqrt(pxx1**2 + py1**2)'); did you mean 'px1'?"),
    ("Type", "branch 'Type' is not numeric (string); choose numeric branches"),
    ("sqrt", "no branch 'sqrt'; 'sqrt' is a function: call it, e.g. sqrt(x)"),
    ("sqrt(px1, py1)", "sqrt() takes 1 argument(s)"),
    ("px1[:, 0]", "[:, 0] needs a jagged branch"),
    ("pt(px1)", "missing a required argument: 'py'"),
    ("a b", "'a b' is neither a branch nor a valid expression"),
    ("__import__('os').system('echo hacked')", "unknown function \"__import__('os').system\"; expressions may call sqrt"),
    ("open('x')", "unknown function 'open'"),
    ("px1.real", "'px1.real' is not allowed; expressions may use numbers"),
    ("(lambda: 1)()", "unknown function 'lambda: 1'"),
    ("px1 if px1 > 0 else py1", "is not allowed"),
    ("'abc'", "constant 'abc' is not a number"),
    ("[px1][0]", "only per-event object indexing"),
    ("10**10**10 + px1", "cannot evaluate (OverflowError"),
    ("px1 + 1 % 0", "cannot evaluate (ZeroDivisionError"),
    ("(" * 300 + "px1" + ")" * 300, "valid expression"),
])
def test_zmumu_bad_features(feature, message):
    raises(message, ZMUMU, "M", [feature])


@shared(ZMUMU, root=True)
def test_root_bad_arguments(tmp_path):
    raises("no tree 'Events'; trees in the file: 'events'", ZMUMU, "M", ["pt1"], tree="Events")
    raises("columns= is for unnamed .npy/HDF5 arrays; ROOT branches have names", ZMUMU, "M", ["pt1"], columns=["a"])
    raises("key= is for HDF5 files; use tree= to pick a ROOT tree", ZMUMU, "M", ["pt1"], key="events")
    raises("feature name 'pt1' appears twice", ZMUMU, "M", ["pt1", "pt1"])
    raises("features must be a non-empty list", ZMUMU, "M", "pt1")
    raises("features must be a non-empty list", ZMUMU, "M", [])
    assert read_events(ZMUMU, "M", (f for f in ["pt1", "pt2"])).names == ["pt1", "pt2"]
    raises("mass must be a non-empty string", ZMUMU, "", ["pt1"])
    raises("step_size must be a positive integer, got 0", ZMUMU, "M", ["pt1"], step_size=0)
    raises("max_events must be a positive integer, got 0", ZMUMU, "M", ["pt1"], max_events=0)
    import uproot

    with uproot.open(ZMUMU) as f:
        negative = f["events"]["Q1"].array(library="np") == -1
    raises(f"feature 'log(Q1 + 1)' is -inf (not finite) at event {np.argmax(negative)}, one of {negative.sum()} in events 0…2303",
           ZMUMU, "M", ["log(Q1 + 1)"])


@shared(ZMUMU, root=True)
def test_truncated_and_damaged_root_files(tmp_path):
    data = ZMUMU.read_bytes()
    truncated = tmp_path / "truncated.root"
    truncated.write_bytes(data[: len(data) // 2])
    raises(f"{truncated}: not a readable ROOT file", truncated, "M", ["pt1"])
    junk = tmp_path / "junk.root"
    junk.write_bytes(np.random.default_rng(0).bytes(4000))
    raises(f"{junk}: not a readable ROOT file (ValueError: not a ROOT file", junk, "M", ["pt1"])


# ---------------------------------------------------------------------------------- ROOT, written here

def write_tree(path: Path, branches: dict, name: str = "t", **more: dict) -> Path:
    import uproot

    with uproot.recreate(path) as f:
        for tree_name, tree in {name: branches, **more}.items():
            f.mktree(tree_name, {k: v.dtype if isinstance(v, np.ndarray) else "var * float64" for k, v in tree.items()})
            f[tree_name].extend(tree)
    return path


@needs_uproot
def test_root_written_trees(tmp_path):
    import awkward as ak

    x = np.arange(20.0)
    x[7], x[9] = np.nan, np.inf
    label = np.arange(20) % 2
    jagged = ak.Array([[1.0, 2.0]] * 19 + [[3.0]])
    path = write_tree(tmp_path / "t.root", {"x": x, "y": 2 * x, "label": label, "bad": label + 1, "j": jagged})
    raises(f"{path} (tree 't'): feature 'x' is nan (not finite) at event 7, one of 2 in events 0…9; fix or remove such events",
           path, "label", ["x"], step_size=10)
    raises("mass 'y' is nan (not finite) at event 7", path, "y", ["j[:, 0]"], max_events=19)
    raises("feature 'log(label)' is -inf (not finite) at event 0, one of 10 in events 0…19", path, "y", ["log(label)"])
    raises("label 'bad' must be 0 or 1, got 2.0 at event 1", path, "j[:, 0]", ["j[:, 1]"], label="bad", max_events=5)
    raises("feature 'j[:, 1]' is undefined at event 19 (too few objects)", path, "label", ["j[:, 1]"])
    ev = read_events(path, "y", ["j[:, 1]", "j[:, 0] * 2"], label="label", max_events=7, step_size=3)
    assert len(ev) == 7 and ev.labels.tolist() == [0, 1, 0, 1, 0, 1, 0] and ev.features[:, 1].tolist() == [2.0] * 7
    short = write_tree(tmp_path / "short.root", {"m": np.ones(3), "j": ak.Array([[1.0], [], [2.0]])})
    raises(f"{short} (tree 't'): no events read (3 dropped as incomplete)", short, "m", ["j[:, 1]"], drop_incomplete=True)
    two = write_tree(tmp_path / "two.root", {"x": np.ones(3)}, other={"x": np.zeros(3)})
    raises("several trees ('t', 'other') in the file", two, "x", ["x"])
    assert read_events(two, "x", ["2*x"], tree="other").features[:, 0].tolist() == [0.0, 0.0, 0.0]


@needs_uproot
def test_root_without_trees_and_rntuple(tmp_path):
    import uproot

    histogram_only = tmp_path / "h.root"
    with uproot.recreate(histogram_only) as f:
        f["h"] = np.histogram(np.random.default_rng(0).normal(size=100))
    raises("no TTree in the file (it holds 'h'); pass tree= one of its trees", histogram_only, "x", ["y"])
    rntuple = tmp_path / "rn.root"
    with uproot.recreate(rntuple) as f:
        f["ntuple"] = {"m": np.linspace(1, 2, 11), "a": np.arange(11.0)}
    ev = read_events(rntuple, "m", ["a", "b=a**2"], step_size=4)
    assert ev.features[:, 1].tolist() == [a**2 for a in range(11)]


@needs_uproot
def test_root_damaged_basket(tmp_path):
    values = np.random.default_rng(1).normal(size=200_000)
    path = write_tree(tmp_path / "big.root", {"x": values, "y": values})
    data = bytearray(path.read_bytes())
    middle = len(data) // 4
    data[middle:middle + 4096] = np.random.default_rng(2).bytes(4096)
    path.write_bytes(bytes(data))
    raises(f"{path} (tree 't'): cannot read the events (", path, "x", ["y"])


# ---------------------------------------------------------------------------------- HDF5


def write_fixed_by_hand(path: Path, frame: dict[str, np.ndarray], transposed: bool = True) -> Path:
    """pandas format="fixed" as pandas writes it: a float block and an int block, names as bytes."""
    blocks = [[k for k, v in frame.items() if v.dtype.kind == "f"], [k for k, v in frame.items() if v.dtype.kind != "f"]]
    with h5py.File(path, "w") as f:
        group = f.create_group("df")
        group.attrs.update({"pandas_type": b"frame", "nblocks": len(blocks), "ndim": 2})
        group["axis0"] = np.array(list(frame), dtype="S")
        group["axis1"] = np.arange(len(frame["label"]))
        for i, names in enumerate(blocks):
            group[f"block{i}_items"] = np.array(names, dtype="S")
            values = np.column_stack([frame[n] for n in names])
            group[f"block{i}_values"] = values if transposed else values.T
            group[f"block{i}_values"].attrs["transposed"] = int(transposed)
    return path


def write_table_by_hand(path: Path, frame: dict[str, np.ndarray], kind: dict[int, bytes] | None = None,
                        one_block: bool = False) -> Path:
    """pandas format="table" as PyTables writes it: compound df/table with index and values_block_i
    vectors; names pickled (protocol 0) in values_block_i_kind and the group's non_index_axes."""
    if one_block:
        frame = {k: v.astype(np.float64) for k, v in frame.items()}
    blocks = [[k for k, v in frame.items() if v.dtype.kind == "f"], [k for k, v in frame.items() if v.dtype.kind != "f"]]
    blocks = [b for b in blocks if b]
    n = len(frame["label"])
    dtype = [("index", "<i8")] + [(f"values_block_{i}", frame[b[0]].dtype, (len(b),)) for i, b in enumerate(blocks)]
    rows = np.zeros(n, dtype=dtype)
    rows["index"] = np.arange(n)
    with h5py.File(path, "w") as f:
        group = f.create_group("df")
        group.attrs["pandas_type"] = b"frame_table"
        group.attrs["non_index_axes"] = np.bytes_(pickle.dumps([(1, list(frame))], protocol=0))
        for i, names in enumerate(blocks):
            rows[f"values_block_{i}"] = np.column_stack([frame[k] for k in names])
        table = group.create_dataset("table", data=rows, chunks=True)
        for i, names in enumerate(blocks):
            table.attrs[f"values_block_{i}_kind"] = np.bytes_((kind or {}).get(i, pickle.dumps(names, protocol=0)))
    return path


def test_hdf5_pandas_layouts_by_hand(tmp_path):
    frame = jets()
    for path in (write_fixed_by_hand(tmp_path / "fixed.h5", frame), write_fixed_by_hand(tmp_path / "fixed_t.hdf5", frame, False),
                 write_table_by_hand(tmp_path / "table.h5", frame), write_table_by_hand(tmp_path / "one.h5", frame, one_block=True)):
        check_jets(read_jets(path), frame)
        check_jets(read_jets(path, step_size=10), frame)
        check_jets(read_jets(path, step_size=10, max_events=33), frame, rows=33)


def test_hdf5_table_column_names_never_run_code(tmp_path, caplog):
    marker = tmp_path / "hacked"
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    frame = jets(20)
    # The names come from the group's non_index_axes instead, when there is only one block.
    path = write_table_by_hand(tmp_path / "evil.h5", frame, kind={0: payload}, one_block=True)
    check_jets(read_jets(path), frame)
    path = write_table_by_hand(tmp_path / "evil2.h5", frame, kind={0: payload})
    with caplog.at_level(logging.WARNING, logger="nfapps.anomaly.readers"):
        ev = read_events(path, "values_block_0_3", ["label"])
    assert not marker.exists()
    assert "no column names for values_block_0" in caplog.text
    np.testing.assert_array_equal(ev.mass, frame["mj1"])  # the 4th float column


def test_hdf5_genuine_pandas(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("tables")
    frame = jets()
    df = pd.DataFrame(frame)
    for name, options in [("fixed", {"format": "fixed"}), ("table", {"format": "table"}),
                          ("data_columns", {"format": "table", "data_columns": ["mj1", "label"]})]:
        path = tmp_path / f"{name}.h5"
        df.to_hdf(path, key="df", mode="w", **options)
        check_jets(read_jets(path), frame)
        check_jets(read_jets(path, key="df", step_size=16, max_events=100), frame, rows=100)
        if name != "fixed":
            check_jets(read_jets(path, key="df/table"), frame)
    several = tmp_path / "several.h5"
    df.to_hdf(several, key="sr", mode="w")
    df.iloc[:10].to_hdf(several, key="sb", format="table")
    raises("several tables in the file: '/sb' (pandas table), '/sr' (pandas fixed); pass key= one of them", several, "mj1", ["mj2"])
    assert len(read_events(several, "mj1", ["mj2"], key="sb")) == 10


def test_hdf5_plain_datasets(tmp_path):
    frame = jets(64)
    flat = tmp_path / "flat.h5"
    with h5py.File(flat, "w") as f:
        for k, v in frame.items():
            f[k] = v
    check_jets(read_jets(flat, step_size=5), frame)
    grouped = tmp_path / "grouped.h5"
    with h5py.File(grouped, "w") as f:
        for k, v in frame.items():
            f[f"events/{k}"] = v
        f["meta/version"] = np.array([1])
        f["matrix"] = np.column_stack(list(frame.values()))
        f["records"] = np.rec.fromarrays(list(frame.values()), names=list(frame))
    raises("several tables in the file: '/events' (1-D datasets), '/matrix' (2-D dataset), '/meta' (1-D datasets), "
           "'/records' (compound dataset); pass key=", grouped, "mj1", ["mj2"])
    check_jets(read_jets(grouped, key="events"), frame)
    check_jets(read_jets(grouped, key="/matrix", columns=list(frame), step_size=9), frame)
    check_jets(read_jets(grouped, key="records", step_size=9), frame)
    by_index = read_events(grouped, "3", ["6", "tau=5"], key="matrix", label=str(len(frame) - 1))
    assert by_index.names == ["6", "tau"] and by_index.mass_name == "3"
    np.testing.assert_array_equal(by_index.mass, frame["mj1"])
    np.testing.assert_array_equal(by_index.features, np.column_stack([frame["tau3j1"], frame["tau2j1"]]))
    raises("no column 'mj1'; the array's columns have no names: pass columns=[...] with 15 names, or use column indices '0'…'14'",
           grouped, "mj1", ["2"], key="matrix")
    raises("columns= names 2 columns but the array has 15", grouped, "0", ["1"], key="matrix", columns=["a", "b"])
    raises("columns= is only for unnamed 2-D arrays; this 1-D datasets table names its columns", grouped, "a", ["b"],
           key="events", columns=["a", "b"])
    raises(f"{grouped}: no key 'event'; did you mean 'events'", grouped, "mj1", ["mj2"], key="event")
    raises("key 'events/mj1' is not a table of events", grouped, "mj1", ["mj2"], key="events/mj1")
    raises(f"{grouped} (key '/events'): no column 'tau21j1'; did you mean", grouped, "mj1", ["tau21j1"], key="events")


def test_hdf5_bad_files(tmp_path):
    missing = tmp_path / "missing.h5"
    raises(f"{missing}: file not found", missing, "m", ["x"])
    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(np.random.default_rng(0).bytes(3000))
    raises(f"{junk}: not a readable HDF5 file (OSError: ", junk, "m", ["x"])
    good = write_table_by_hand(tmp_path / "good.h5", jets(500))
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])
    raises(f"{truncated}: not a readable HDF5 file", truncated, "mj1", ["mj2"])
    odd = tmp_path / "odd.h5"
    with h5py.File(odd, "w") as f:
        f["a/cube"] = np.zeros((2, 2, 2))
        f["b/x"] = np.arange(4.0)
        f["b/y"] = np.arange(3.0)
        f["b/name"] = np.array([b"p", b"q", b"r", b"s"])
        f["b/flag"] = np.array([0.0, 1.0, 2.0, 1.0])
        f["b/nan"] = np.array([0.0, 1.0, np.nan, 1.0])
    raises("key 'a' is not a table of events", odd, "x", ["y"], key="a")
    raises(f"{odd} (key '/b'): the columns have different lengths", odd, "x", ["y"])
    raises("column 'name' is not numeric (dtype |S1)", odd, "x", ["name"])
    raises("label 'flag' must be 0 or 1, got 2.0 at event 2", odd, "x", ["x"], label="flag")
    raises("feature 'nan' is nan (not finite) at event 2", odd, "x", ["nan"])
    raises("tree= is for ROOT files; for .h5 files use key=", odd, "x", ["y"], tree="t")
    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w") as f:
        f["a/cube"] = np.zeros((2, 2, 2))
    raises("no table of events in the file: none", empty, "x", ["y"])


# ---------------------------------------------------------------------------------- .npy


@shared(LHCO_TEST)
def test_lhco_npy():
    ev = read_events(LHCO_TEST, "mjj", ["mj1", "delta_mj", "tau21_1", "tau21_2"], columns=LHCO_COLUMNS, label="label")
    assert len(ev) == 60000 and ev.features.shape == (60000, 4) and ev.names == LHCO_COLUMNS[1:5]
    assert ev.labels.sum() == 20000 and set(np.unique(ev.labels)) == {0, 1}
    assert 3.3 <= ev.mass.min() and ev.mass.max() <= 3.7
    raw = np.load(LHCO_TEST)
    np.testing.assert_array_equal(ev.features, raw[:, 1:5])
    first = read_events(LHCO_TEST, "0", ["3", "tau21=4"], label="5", step_size=999, max_events=5000)
    assert len(first) == 5000 and first.names == ["3", "tau21"]
    np.testing.assert_array_equal(first.features, raw[:5000, 3:5])
    np.testing.assert_array_equal(first.labels, raw[:5000, 5])


def test_npy_files(tmp_path):
    frame = jets(50)
    matrix = tmp_path / "jets.npy"
    np.save(matrix, np.column_stack(list(frame.values())))
    check_jets(read_jets(matrix, columns=list(frame), step_size=8), frame)
    raises("no column 'mj1'; the array's columns have no names: pass columns=[...] with 15 names", matrix, "mj1", ["0"])
    raises("columns= names 1 columns but the array has 15; give one name per column", matrix, "a", ["a"], columns=["a"])
    raises("columns must be a list of column names", matrix, "a", ["a"], columns="abc")
    structured = tmp_path / "records.npy"
    np.save(structured, np.rec.fromarrays(list(frame.values()), names=list(frame)))
    check_jets(read_jets(structured, step_size=8), frame)
    flat = tmp_path / "flat.npy"
    np.save(flat, np.arange(5.0))
    raises("expected a 2-D array (events, columns), got shape (5,)", flat, "0", ["1"])
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"not numpy" * 20)
    raises("not a numpy .npy file", junk, "0", ["1"])
    truncated = tmp_path / "truncated.npy"
    truncated.write_bytes(matrix.read_bytes()[:1000])
    raises(f"{truncated}: not a readable .npy array", truncated, "0", ["1"])
    csv = tmp_path / "x.csv"
    csv.write_text("1,2\n")
    raises(f"{csv}: unknown file type '.csv'; expected one of .root, .h5, .hdf5, .npy", csv, "0", ["1"])
    raises(f"{tmp_path}: not a file", tmp_path, "0", ["1"])
