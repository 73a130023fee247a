"""Events in: the resonant variable and named features from ROOT, HDF5 or .npy files.

``read_events(path, mass, features, ...)`` returns :class:`Events` — ``mass`` (N,), ``features``
(N, k), their names and optional 0/1 truth ``labels`` — all float64 (labels int64). The file
type comes from the suffix:

``.root`` (needs ``uproot`` and ``awkward``)
    One TTree (or RNTuple) of the file: ``tree=`` names it, and may be left out when the file
    holds only one. Only the branches the requested columns need are read, ``step_size`` entries
    at a time, so a large file is never loaded whole.

``.h5`` / ``.hdf5`` (h5py; pandas is not needed), one table of events in one of these layouts:

    1. plain datasets: a group (the file's root or ``key``) holding one 1-D dataset per column,
       named by the dataset names; or one 2-D dataset (rows = events) whose column names are given
       with ``columns=`` (or picked by integer index, see below); or a compound (numpy structured)
       dataset, one field per column;
    2. pandas ``format="fixed"`` (``DataFrame.to_hdf(path, key="df")``): group ``df`` with
       ``block0_values`` (N, k0) and ``block0_items`` (k0 column names, bytes), and
       ``block1_values``/``block1_items`` … for further dtype blocks;
    3. pandas ``format="table"`` (PyTables): group ``df`` with a compound dataset ``df/table``
       whose fields are ``index``, ``values_block_0`` (each row a (k0,) vector), ``values_block_1``
       …, and one field per ``data_columns`` column. The names of a block's columns are a pickled
       list in the attribute ``values_block_0_kind`` of ``df/table``, or else in the group's
       ``non_index_axes`` attribute; both are read with an unpickler that builds lists, tuples,
       strings and numbers only (no classes, no functions — nothing runs).

    Without ``key`` the file must hold exactly one such table (anywhere in it); otherwise ``key``
    (a group or dataset path, e.g. ``"df"``) chooses it. Rows are read ``step_size`` at a time.

``.npy``
    A 2-D array, rows = events, opened memory-mapped; ``columns=`` names its columns. A
    structured array's fields name themselves.

Columns: mass, each feature and the label are given as strings. Each is

* a branch/column name (``"M"``, ``"pt1"``, ``"mjj"``); in unnamed 2-D arrays a column index
  (``"0"``, ``"5"``);
* an expression over such names (``"sqrt(px1**2 + py1**2)"``): numbers, names, ``+ - * / ** %``,
  parentheses, calls of :data:`FUNCTIONS` — ``sqrt log exp abs sin cos atan2 minimum maximum``,
  ``pt(px, py)``, ``eta(px, py, pz)``, ``phi(px, py)``, ``invariant_mass(E, px, py, pz[, n])``
  (of the leading n objects of jagged branches), ``count(x)`` (objects per event) — and per-event
  object indexing ``Muon_Px[:, 0]`` (the leading object of a jagged branch). Nothing else: no
  attributes, no other calls, no builtins. Expressions are checked and evaluated by this module
  (over the ``ast`` of the text, never ``eval``); names must be Python identifiers;
* ``name=expression`` to name the result (``"mll=invariant_mass(Muon_E, Muon_Px, Muon_Py, Muon_Pz, 2)"``);
* a key of ``aliases``, a mapping of names to expressions; aliases may use other aliases, and shadow
  columns of the same name.

An event without the objects an expression asks for (``Muon_Px[:, 1]`` with one muon,
``invariant_mass(..., 2)`` with fewer than two) is an error, or dropped (and counted in the log)
with ``drop_incomplete=True``. A non-finite mass or feature is an error naming the event.
Every bad input raises :class:`EventsError` with a one-line message.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import inspect
import io
import logging
import operator
import pickle
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

ROOT_SUFFIXES = (".root",)
HDF5_SUFFIXES = (".h5", ".hdf5")
NPY_SUFFIXES = (".npy",)


class EventsError(ValueError):
    """Bad input to :func:`read_events`: the message names the file and what to change."""


@dataclass
class Events:
    """Events for an anomaly search: the resonant variable, features and optional truth labels."""

    mass: np.ndarray  # (N,) float64, the resonant variable
    features: np.ndarray  # (N, k) float64
    names: list[str]  # k feature names
    mass_name: str
    labels: np.ndarray | None = None  # (N,) int64, 1 signal / 0 background, when known
    source: str = ""  # the file the events came from

    def __post_init__(self) -> None:
        self.mass = np.asarray(self.mass, dtype=np.float64)
        self.features = np.asarray(self.features, dtype=np.float64)
        self.names = list(self.names)
        if self.mass.ndim != 1 or self.features.ndim != 2 or len(self.features) != len(self.mass):
            raise EventsError(f"Events needs mass (N,) and features (N, k), got shapes {self.mass.shape} and {self.features.shape}")
        if len(self.names) != self.features.shape[1]:
            raise EventsError(f"Events has {self.features.shape[1]} features but {len(self.names)} names: {self.names}")
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64)
            if self.labels.shape != self.mass.shape:
                raise EventsError(f"Events has {len(self.mass)} events but labels of shape {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.mass)

    def select(self, rows: np.ndarray | Sequence[int] | Sequence[bool]) -> Events:
        """A new Events with the rows picked by a boolean mask (length N) or an array of indices."""
        rows = np.asarray(rows)
        if rows.size == 0:
            rows = rows.astype(np.int64)
        if rows.dtype == bool and rows.shape != self.mass.shape:
            raise EventsError(f"select: boolean mask has shape {rows.shape}, expected ({len(self)},)")
        if rows.dtype != bool and rows.size and not np.issubdtype(rows.dtype, np.integer):
            raise EventsError(f"select: expected a boolean mask or integer indices, got dtype {rows.dtype}")
        labels = None if self.labels is None else self.labels[rows]
        return Events(self.mass[rows], self.features[rows], list(self.names), self.mass_name, labels, self.source)


# --------------------------------------------------------------------------------------------
# Functions available in expressions. Arguments are numpy arrays (HDF5, .npy, flat branches) or
# awkward arrays (ROOT), one entry — or, for jagged branches, a list of objects — per event.


def _jagged(x: Any) -> bool:
    return not isinstance(x, np.ndarray) and getattr(x, "ndim", 0) > 1


def _mass(e: Any, px: Any, py: Any, pz: Any) -> Any:
    return np.sqrt(np.maximum(e**2 - px**2 - py**2 - pz**2, 0.0))


def invariant_mass(e: Any, px: Any, py: Any, pz: Any, n: int | None = None) -> Any:
    """Invariant mass sqrt(max(E² − p², 0)) of a four-momentum given per event; for jagged
    arrays (objects per event) of the sum of the leading ``n`` objects — undefined (dropped or an
    error) for events with fewer."""
    if not _jagged(e):
        if n not in (None, 1):
            raise _ExprError(f"invariant_mass got one four-momentum per event, so n={n} makes no sense; leave n out")
        return _mass(e, px, py, pz)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise _ExprError("invariant_mass of jagged arrays needs n ≥ 1, the number of leading objects to add, "
                         "e.g. invariant_mass(Muon_E, Muon_Px, Muon_Py, Muon_Pz, 2)")
    import awkward as ak

    enough = ak.num(e, axis=1) >= n
    total = [ak.sum(x[:, :n], axis=1) for x in (e, px, py, pz)]
    return ak.mask(_mass(*total), enough)


def pt(px: Any, py: Any) -> Any:
    """Transverse momentum sqrt(px² + py²)."""
    return np.hypot(px, py)


def eta(px: Any, py: Any, pz: Any) -> Any:
    """Pseudorapidity asinh(pz / pt)."""
    return np.arcsinh(pz / np.hypot(px, py))


def phi(px: Any, py: Any) -> Any:
    """Azimuth atan2(py, px)."""
    return np.arctan2(py, px)


def count(x: Any) -> Any:
    """The number of objects per event in a jagged branch."""
    if not _jagged(x):
        raise _ExprError("count() needs a jagged branch (several objects per event)")
    import awkward as ak

    return ak.num(x, axis=1)


#: What expressions may call: name → function.
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": np.sqrt, "log": np.log, "exp": np.exp, "abs": np.abs, "sin": np.sin, "cos": np.cos,
    "atan2": np.arctan2, "minimum": np.minimum, "maximum": np.maximum,
    "pt": pt, "eta": eta, "phi": phi, "invariant_mass": invariant_mass, "count": count,
}

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.Pow: operator.pow, ast.Mod: operator.mod}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_NAMED = re.compile(r"([A-Za-z_]\w*)\s*=(?!=)\s*(.+)", re.DOTALL)
_SYNTAX = "numbers, column names, + - * / ** %, x[:, i] and calls of " + ", ".join(FUNCTIONS)


class _ExprError(Exception):
    """An expression is not allowed or cannot be evaluated (reported as an EventsError)."""


def _object_index(node: ast.Subscript) -> int:
    """i of ``x[:, i]``; the only subscript expressions may use."""
    s = node.slice
    if (isinstance(s, ast.Tuple) and len(s.elts) == 2 and isinstance(s.elts[0], ast.Slice)
            and s.elts[0].lower is s.elts[0].upper is s.elts[0].step is None
            and isinstance(s.elts[1], ast.Constant) and type(s.elts[1].value) is int and s.elts[1].value >= 0):
        return s.elts[1].value
    raise _ExprError(f"only per-event object indexing like Muon_Px[:, 0] is allowed, not {ast.unparse(node)!r}")


def _check_call(node: ast.Call) -> None:
    if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
        raise _ExprError(f"unknown function {ast.unparse(node.func)!r}; expressions may call {', '.join(FUNCTIONS)}")
    if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
        raise _ExprError(f"no * or ** arguments in {ast.unparse(node)!r}")
    fn = FUNCTIONS[node.func.id]
    if isinstance(fn, np.ufunc):
        if node.keywords or len(node.args) != fn.nin:
            raise _ExprError(f"{node.func.id}() takes {fn.nin} argument(s), got {ast.unparse(node)!r}")
        return
    try:
        inspect.signature(fn).bind(*node.args, **{k.arg: k.value for k in node.keywords})
    except TypeError as err:
        raise _ExprError(f"{ast.unparse(node)!r}: {err}") from None


def _names_in(node: ast.AST) -> set[str]:
    """The column/alias names an expression uses; raises _ExprError for anything not allowed."""
    if isinstance(node, ast.Expression):
        return _names_in(node.body)
    if isinstance(node, ast.Constant):
        if type(node.value) not in (int, float):
            raise _ExprError(f"constant {node.value!r} is not a number")
        return set()
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _names_in(node.left) | _names_in(node.right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _names_in(node.operand)
    if isinstance(node, ast.Call):
        _check_call(node)
        return set().union(*(_names_in(a) for a in [*node.args, *(k.value for k in node.keywords)]))
    if isinstance(node, ast.Subscript):
        _object_index(node)
        return _names_in(node.value)
    raise _ExprError(f"{ast.unparse(node)!r} is not allowed; expressions may use {_SYNTAX}")


def _object(x: Any, i: int) -> Any:
    """``x[:, i]``: object i of each event, None (missing) where an event has fewer."""
    if not _jagged(x):
        raise _ExprError(f"[:, {i}] needs a jagged branch (several objects per event); this value has one per event")
    import awkward as ak

    return ak.pad_none(x, i + 1, axis=1)[:, i]


class _Env:
    """Values of names in one chunk of events: aliases evaluated once, columns as read."""

    def __init__(self, chunk: Mapping[str, Any], keys: Mapping[str, str], aliases: Mapping[str, ast.Expression]) -> None:
        self.chunk, self.keys, self.aliases = chunk, keys, aliases
        self.cache: dict[str, Any] = {}

    def value(self, name: str) -> Any:
        if name not in self.cache:
            self.cache[name] = _evaluate(self.aliases[name], self) if name in self.aliases else self.chunk[self.keys[name]]
        return self.cache[name]


def _evaluate(node: ast.AST, env: _Env) -> Any:
    """Evaluate a checked expression (see _names_in) over the names in env; nothing else is reachable."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, env)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return env.value(node.id)
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left, env), _evaluate(node.right, env)
        if isinstance(left, int) and isinstance(right, int):
            left = float(left)  # no unbounded integer arithmetic (10**10**10)
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_evaluate(node.operand, env))
    if isinstance(node, ast.Call):
        kwargs = {k.arg: _evaluate(k.value, env) for k in node.keywords}
        return FUNCTIONS[node.func.id](*(_evaluate(a, env) for a in node.args), **kwargs)
    if isinstance(node, ast.Subscript):
        return _object(_evaluate(node.value, env), _object_index(node))
    raise _ExprError(f"{ast.unparse(node)!r} is not allowed")  # unreachable after _names_in


def _per_event(value: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """An expression's value as (float64 values, missing mask), one entry per event."""
    if isinstance(value, (int, float, np.number)):
        return np.full(n, float(value)), np.zeros(n, dtype=bool)
    if isinstance(value, np.ndarray):
        if value.ndim != 1:
            raise _ExprError(f"expected one value per event, got an array of shape {value.shape}")
        return value.astype(np.float64), np.zeros(n, dtype=bool)
    import awkward as ak

    if value.ndim != 1:
        raise _ExprError("it has several values per event (a jagged branch); pick one object, e.g. Muon_Px[:, 0], "
                         "or reduce them, e.g. count(Muon_Px)")
    missing = np.asarray(ak.to_numpy(ak.is_none(value)), dtype=bool)
    return np.asarray(ak.to_numpy(ak.fill_none(value, np.nan)), dtype=np.float64), missing


# --------------------------------------------------------------------------------------------
# Sources: named columns, read in chunks of events.


def _brief(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else ""
    return f"{type(err).__name__}: {line[:200]}" if line else type(err).__name__


def _listing(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "") if names else "none"


def _suggest(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.6)
    return f"did you mean {' or '.join(repr(c) for c in close)}?" if close else f"available: {_listing(names)}"


def _text(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _float_column(x: np.ndarray, name: str, where: str, kind: str) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise EventsError(f"{where}: {kind} '{name}' is not numeric (dtype {x.dtype}); choose numeric {kind}s")
    return np.asarray(x, dtype=np.float64)


@contextlib.contextmanager
def _closed_on_failure(file: Any, what: str) -> Iterator[None]:
    """Close ``file`` if the block fails; any failure other than an EventsError becomes one, "what (cause); …"."""
    try:
        yield
    except EventsError:
        file.close()
        raise
    except Exception as err:  # noqa: BLE001 (any reader failure becomes an EventsError)
        file.close()
        raise EventsError(f"{what} ({_brief(err)}); the file may be truncated or corrupt") from None


class _Source:
    """Named columns of one table of events, read in chunks: (first event, events, {key: array})."""

    kind = "column"

    def __init__(self, where: str, columns: Sequence[str]) -> None:
        self.where, self.columns = where, list(columns)
        self._columns = set(self.columns)
        self.file: Any = None  # closed by close()

    def resolve(self, name: str) -> str | None:
        """The key that reads ``name``, or None if there is no such column."""
        return name if name in self._columns else None

    def hint(self, name: str) -> str:
        """What to do about a name that does not resolve."""
        return _suggest(name, self.columns)

    def chunks(self, keys: Sequence[str], step_size: int, stop: int | None) -> Iterator[tuple[int, int, dict[str, Any]]]:
        raise NotImplementedError

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class _RootSource(_Source):
    """A TTree or RNTuple, read with uproot's iterate: only the needed branches, step_size entries at a time."""

    kind = "branch"

    def __init__(self, path: Path, tree: str | None) -> None:
        try:
            import uproot  # brings awkward
        except ImportError as err:
            raise EventsError(f"{path}: reading ROOT files needs uproot and awkward ({_brief(err)}); pip install uproot") from None
        try:
            file = uproot.open(path)
            classes = file.classnames(cycle=False)
        except Exception as err:  # noqa: BLE001 (any reader failure becomes an EventsError)
            raise EventsError(f"{path}: not a readable ROOT file ({_brief(err)}); check that it is a complete, uncorrupted ROOT file") from None
        with _closed_on_failure(file, f"{path}: cannot read its trees"):
            trees = [k for k, c in classes.items() if c.startswith(("TTree", "TNtuple")) or c.endswith("RNTuple")]
            if tree is None:
                if len(trees) != 1:
                    what = "no TTree" if not trees else f"several trees ({_listing(trees)})"
                    raise EventsError(f"{path}: {what} in the file (it holds {_listing(list(classes))}); pass tree= one of its trees")
                tree = trees[0]
            tree = tree.split(";")[0]  # a cycle number, as in "events;1", is not needed
            if tree not in trees:
                raise EventsError(f"{path}: no tree '{tree}'; trees in the file: {_listing(trees)}")
            self.tree = file[tree]
            super().__init__(f"{path} (tree '{tree}')", self.tree.keys())
            self.file = file

    def chunks(self, keys: Sequence[str], step_size: int, stop: int | None) -> Iterator[tuple[int, int, dict[str, Any]]]:
        import awkward as ak

        wanted = set(keys)
        for arrays, report in self.tree.iterate(filter_name=lambda name: name in wanted, step_size=step_size,
                                                entry_stop=stop, library="ak", report=True):
            columns = {}
            for key in keys:
                try:
                    columns[key] = ak.values_astype(arrays[key], np.float64)
                except Exception:  # noqa: BLE001 (not convertible: reported just below)
                    columns[key] = arrays[key]
                if not str(columns[key].type).endswith("float64"):
                    raise EventsError(f"{self.where}: branch '{key}' is not numeric ({arrays[key].type.content}); "
                                      f"choose numeric branches")
            yield report.tree_entry_start, len(arrays), columns


class _RowSource(_Source):
    """A table whose rows can be sliced (HDF5 datasets, memory-mapped .npy): read() gives rows start:stop."""

    n_rows: int

    def read(self, keys: Sequence[str], start: int, stop: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def rows(self, keys: Sequence[str]) -> int:
        return self.n_rows

    def chunks(self, keys: Sequence[str], step_size: int, stop: int | None) -> Iterator[tuple[int, int, dict[str, Any]]]:
        n = self.rows(keys) if stop is None else min(stop, self.rows(keys))
        for start in range(0, n, step_size):
            end = min(start + step_size, n)
            yield start, end - start, self.read(keys, start, end)


def _read_columns(data: Any, indices: Sequence[int], start: int, stop: int, transposed: bool = False) -> dict[int, np.ndarray]:
    """Columns ``indices`` of rows start:stop of a 2-D array (h5py needs increasing, unique indices)."""
    order = sorted(set(indices))
    block = data[order, start:stop].T if transposed else data[start:stop, order]
    return {j: block[:, i] for i, j in enumerate(order)}


class _MatrixSource(_RowSource):
    """A 2-D array, rows = events: columns named by ``columns=``, or by index strings "0", "1", …"""

    def __init__(self, where: str, data: Any, columns: Sequence[str] | None) -> None:
        if len(data.shape) != 2:
            raise EventsError(f"{where}: expected a 2-D array (events, columns), got shape {data.shape}")
        if data.dtype.kind not in "biuf":
            raise EventsError(f"{where}: the array is not numeric (dtype {data.dtype})")
        width = data.shape[1]
        if columns is not None and len(columns) != width:
            raise EventsError(f"{where}: columns= names {len(columns)} columns but the array has {width}; give one name per column")
        self.named = columns is not None
        names = [str(c) for c in columns] if columns is not None else [str(j) for j in range(width)]
        super().__init__(where, names)
        self.data, self.n_rows = data, data.shape[0]
        self.index = {str(j): j for j in range(width)} | {name: j for j, name in enumerate(names)}

    def resolve(self, name: str) -> str | None:
        return name if name in self.index else None

    def hint(self, name: str) -> str:
        if not self.named:
            return (f"the array's columns have no names: pass columns=[...] with {len(self.columns)} names, "
                    f"or use column indices '0'…'{len(self.columns) - 1}'")
        return super().hint(name)

    def read(self, keys: Sequence[str], start: int, stop: int) -> dict[str, np.ndarray]:
        block = _read_columns(self.data, [self.index[k] for k in keys], start, stop)
        return {k: np.asarray(block[self.index[k]], dtype=np.float64) for k in keys}


class _DatasetsSource(_RowSource):
    """An HDF5 group with one 1-D dataset per column."""

    def __init__(self, where: str, datasets: Mapping[str, Any]) -> None:
        super().__init__(where, list(datasets))
        self.datasets = dict(datasets)

    def rows(self, keys: Sequence[str]) -> int:
        lengths = {k: len(self.datasets[k]) for k in keys}
        if len(set(lengths.values())) > 1:
            raise EventsError(f"{self.where}: the columns have different lengths {lengths}; choose columns of one table")
        return next(iter(lengths.values()))

    def read(self, keys: Sequence[str], start: int, stop: int) -> dict[str, np.ndarray]:
        return {k: _float_column(self.datasets[k][start:stop], k, self.where, self.kind) for k in keys}


class _PandasFixedSource(_RowSource):
    """pandas format="fixed": block{i}_values (N, k_i) with names in block{i}_items."""

    def __init__(self, where: str, group: Any) -> None:
        self.blocks, place = [], {}
        while f"block{len(self.blocks)}_items" in group and f"block{len(self.blocks)}_values" in group:
            i = len(self.blocks)
            values = group[f"block{i}_values"]
            transposed = not bool(values.attrs.get("transposed", True))  # pandas stores (N, k), flagged transposed
            self.blocks.append((values, transposed))
            for j, item in enumerate(group[f"block{i}_items"][()]):
                place.setdefault(_text(item), (i, j))
        super().__init__(where, list(place))
        self.place = place
        lengths = {(v.shape[1] if t else v.shape[0]) for v, t in self.blocks if len(v.shape) == 2}
        if len(lengths) > 1:
            raise EventsError(f"{where}: the pandas blocks have different numbers of rows {sorted(lengths)}; "
                              f"the file is not a valid DataFrame")
        self.n_rows = lengths.pop() if lengths else 0

    def read(self, keys: Sequence[str], start: int, stop: int) -> dict[str, np.ndarray]:
        out = {}
        for i, (values, transposed) in enumerate(self.blocks):
            mine = [k for k in keys if self.place[k][0] == i]
            if not mine:
                continue
            if len(values.shape) != 2 or values.dtype.kind not in "biuf":
                raise EventsError(f"{self.where}: column '{mine[0]}' is not numeric (pandas block {i}); choose numeric columns")
            block = _read_columns(values, [self.place[k][1] for k in mine], start, stop, transposed)
            out.update({k: np.asarray(block[self.place[k][1]], dtype=np.float64) for k in mine})
        return out


class _CompoundSource(_RowSource):
    """A 1-D compound (structured) array: a column per scalar field, or per entry of a vector
    field (pandas table blocks); ``place`` maps column name → (field, entry or None)."""

    def __init__(self, where: str, data: Any, place: Mapping[str, tuple[str, int | None]]) -> None:
        super().__init__(where, list(place))
        self.data, self.place, self.n_rows = data, dict(place), len(data)

    def read(self, keys: Sequence[str], start: int, stop: int) -> dict[str, np.ndarray]:
        fields = sorted({self.place[k][0] for k in keys})
        rows = self.data.fields(fields)[start:stop] if hasattr(self.data, "fields") else self.data[start:stop][fields]
        out = {}
        for k in keys:
            field, j = self.place[k]
            column = rows[field] if j is None else rows[field][:, j]
            out[k] = _float_column(column, k, self.where, self.kind)
        return out


# --------------------------------------------------------------------------------------------
# HDF5 layouts.


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain data only — lists, tuples, dicts, strings, numbers; refuses every class and
    function, so loading runs no code (pandas/PyTables store column names as such pickles)."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle_plain(raw: Any) -> Any:
    """The plain value pickled in an attribute, or None if it is not one."""
    if isinstance(raw, np.ndarray) and raw.shape == ():
        raw = raw.item()
    if not isinstance(raw, bytes):
        return None
    try:
        return _PlainUnpickler(io.BytesIO(raw)).load()
    except Exception:  # noqa: BLE001 (not a plain pickle: no names from it)
        return None


def _names(value: Any) -> list[str] | None:
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        return [str(v) for v in value]
    return None


def _pandas_table(where: str, group: Any) -> _CompoundSource:
    """pandas format="table": group/table with fields index, values_block_i (vectors) and data columns."""
    table = group["table"]
    fields = [f for f in table.dtype.names if f != "index"]
    vectors = [f for f in fields if table.dtype[f].shape != ()]
    place: dict[str, tuple[str, int | None]] = {f: (f, None) for f in fields if f not in vectors}
    axes = _unpickle_plain(group.attrs.get("non_index_axes"))
    axes = axes if isinstance(axes, list) else []  # pandas: [(1, [column names])]
    all_names = next((_names(a[1]) for a in axes if isinstance(a, tuple) and len(a) == 2), None) or []
    for field in vectors:
        width = table.dtype[field].shape[0]
        names = _names(_unpickle_plain(table.attrs.get(f"{field}_kind")))
        if names is None and len(vectors) == 1:
            names = [n for n in all_names if n not in place]
        if names is None or len(names) != width:
            names = [f"{field}_{j}" for j in range(width)]
            logger.warning("%s: no column names for %s; calling them %s … %s", where, field, names[0], names[-1])
        for j, name in enumerate(names):
            place.setdefault(name, (field, j))
    return _CompoundSource(where, table, place)


def _layout(node: Any) -> str | None:
    """Which table layout an HDF5 group or dataset holds, if any."""
    import h5py

    if isinstance(node, h5py.Dataset):
        if node.dtype.names:
            return "compound dataset" if node.ndim == 1 else None
        return "2-D dataset" if node.ndim == 2 else None
    if not isinstance(node, h5py.Group):
        return None
    if "table" in node and isinstance(node["table"], h5py.Dataset) and node["table"].dtype.names:
        return "pandas table"
    if "block0_values" in node and "block0_items" in node:
        return "pandas fixed"
    if any(isinstance(v, h5py.Dataset) and v.ndim == 1 and not v.dtype.names for v in node.values()):
        return "1-D datasets"
    return None


def _find_tables(node: Any, found: list[tuple[str, str]]) -> list[tuple[str, str]]:
    import h5py

    layout = _layout(node)
    if layout:
        found.append((node.name, layout))
    elif isinstance(node, h5py.Group):
        for child in node.values():
            _find_tables(child, found)
    return found


def _hdf5_source(path: Path, file: Any, key: str | None, columns: Sequence[str] | None) -> _RowSource:
    import h5py

    if key is not None:
        node = file.get(key)
        if node is None:
            every: list[str] = []
            file.visit(every.append)
            raise EventsError(f"{path}: no key '{key}'; {_suggest(key, every)}")
        layout = _layout(node)
        if layout is None:
            raise EventsError(f"{path}: key '{key}' is not a table of events: expected a group of 1-D datasets, a 2-D or "
                              f"compound dataset, or a pandas DataFrame (see nfapps.anomaly.readers)")
    else:
        tables = _find_tables(file, [])
        if len(tables) != 1:
            listed = ", ".join(f"'{n}' ({what})" for n, what in tables) or "none"
            raise EventsError(f"{path}: {'several tables' if tables else 'no table of events'} in the file: {listed}; "
                              + ("pass key= one of them" if tables else "expected 1-D datasets, a 2-D dataset or a pandas DataFrame"))
        key, layout = tables[0]
        node = file[key]
    where = f"{path} (key '{node.name}')"
    if layout == "2-D dataset":
        return _MatrixSource(where, node, columns)
    if columns is not None:
        raise EventsError(f"{where}: columns= is only for unnamed 2-D arrays; this {layout} table names its columns: "
                          f"use those names")
    if layout == "pandas table":
        return _pandas_table(where, node)
    if layout == "pandas fixed":
        return _PandasFixedSource(where, node)
    if layout == "compound dataset" and node.name.endswith("/table") and _layout(node.parent) == "pandas table":
        return _pandas_table(f"{path} (key '{node.parent.name}')", node.parent)  # key named the DataFrame's table
    if layout == "compound dataset":
        place = {f: (f, None) for f in node.dtype.names if node.dtype[f].shape == ()}
        return _CompoundSource(where, node, place)
    datasets = {k: v for k, v in node.items() if isinstance(v, h5py.Dataset) and v.ndim == 1 and not v.dtype.names}
    return _DatasetsSource(where, datasets)


def _open_hdf5(path: Path, key: str | None, columns: Sequence[str] | None) -> _RowSource:
    """The table of events in an HDF5 file (see the module docstring for the layouts)."""
    import h5py

    try:
        file = h5py.File(path, "r")
    except Exception as err:  # noqa: BLE001 (any reader failure becomes an EventsError)
        raise EventsError(f"{path}: not a readable HDF5 file ({_brief(err)}); check that it is a complete, uncorrupted HDF5 file") from None
    with _closed_on_failure(file, f"{path}: cannot read the HDF5 file's layout"):
        source = _hdf5_source(path, file, key, columns)
    source.file = file
    return source


def _npy_source(path: Path, columns: Sequence[str] | None) -> _RowSource:
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic != b"\x93NUMPY":
            raise EventsError(f"{path}: not a numpy .npy file (it does not start with the .npy header); save arrays with numpy.save")
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except EventsError:
        raise
    except Exception as err:  # noqa: BLE001 (any reader failure becomes an EventsError)
        raise EventsError(f"{path}: not a readable .npy array ({_brief(err)}); check that it is a complete numpy .npy file") from None
    if data.dtype.names:
        if columns is not None:
            raise EventsError(f"{path}: columns= is only for unnamed 2-D arrays; this structured array names its fields: {_listing(data.dtype.names)}")
        if data.ndim != 1:
            raise EventsError(f"{path}: expected a 1-D structured array, got shape {data.shape}")
        return _CompoundSource(str(path), data, {f: (f, None) for f in data.dtype.names if data.dtype[f].shape == ()})
    return _MatrixSource(str(path), data, columns)


# --------------------------------------------------------------------------------------------
# Reading.


@dataclass
class _Spec:
    """One requested output column: its role (mass, feature, label), name, text and expression."""

    role: str
    name: str
    text: str
    tree: ast.Expression


class _Program:
    """Specs compiled against a source: which source keys to read and how to compute each column."""

    def __init__(self, source: _Source, aliases: Mapping[str, str] | None) -> None:
        self.source = source
        self.alias_text = dict(aliases or {})
        self.aliases: dict[str, ast.Expression] = {}
        self.keys: dict[str, str] = {}

    def fail(self, spec: str, role: str, message: str) -> EventsError:
        return EventsError(f"{self.source.where}: {role} '{spec}': {message}")

    def spec(self, text: Any, role: str) -> _Spec:
        if not isinstance(text, str) or not text.strip():
            raise EventsError(f"{self.source.where}: {role} must be a non-empty string naming a column or an expression, got {text!r}")
        text = text.strip()
        named = None if self._direct(text) else _NAMED.fullmatch(text)
        name, expression = (named[1], named[2].strip()) if named else (text, text)
        return _Spec(role, name, text, self.expression(expression, role, text, ()))

    def _close(self, text: str) -> str:
        close = difflib.get_close_matches(text, self.source.columns, n=3, cutoff=0.6)
        return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""

    def _direct(self, text: str) -> bool:
        return text in self.alias_text or self.source.resolve(text) is not None

    def expression(self, text: str, role: str, spec: str, chain: tuple[str, ...]) -> ast.Expression:
        if self._direct(text):
            tree = ast.Expression(body=ast.Name(id=text, ctx=ast.Load()))
        else:
            try:
                tree = ast.parse(text, mode="eval")
            except (SyntaxError, ValueError, RecursionError) as err:
                reason = err.msg if isinstance(err, SyntaxError) else _brief(err)
                raise self.fail(spec, role, f"'{text}' is neither a {self.source.kind} nor a valid expression ({reason})"
                                            f"{self._close(text)}") from None
        try:
            names = _names_in(tree)
        except RecursionError:
            raise self.fail(spec, role, "the expression is nested too deeply") from None
        except _ExprError as err:
            raise self.fail(spec, role, f"{err}{self._close(text)}") from None
        for name in sorted(names):
            self.need(name, role, spec, chain)
        return tree

    def need(self, name: str, role: str, spec: str, chain: tuple[str, ...]) -> None:
        """Resolve a name used by an expression: an alias (compiled once) or a source column."""
        if name in chain:
            raise self.fail(spec, role, f"aliases refer to each other in a cycle: {' -> '.join((*chain, name))}")
        if name in self.alias_text:
            if name not in self.aliases:
                self.aliases[name] = self.expression(str(self.alias_text[name]).strip(), role, spec, (*chain, name))
            return
        key = self.source.resolve(name)
        if key is None:
            used = f" (in {role} '{spec}')" if spec != name else ""
            called = f"; '{name}' is a function: call it, e.g. {name}(x)" if name in FUNCTIONS else ""
            raise EventsError(f"{self.source.where}: no {self.source.kind} '{name}'{used}{called}; {self.source.hint(name)}")
        self.keys[name] = key

    def evaluate(self, spec: _Spec, env: _Env, n: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            with np.errstate(all="ignore"):
                return _per_event(_evaluate(spec.tree, env), n)
        except EventsError:
            raise
        except _ExprError as err:
            raise self.fail(spec.text, spec.role, str(err)) from None
        except Exception as err:  # noqa: BLE001 (any evaluation failure becomes an EventsError)
            raise self.fail(spec.text, spec.role, f"cannot evaluate ({_brief(err)})") from None


def _guarded(chunks: Iterator[Any], where: str) -> Iterator[Any]:
    """The chunks, with reading errors (a truncated file, a bad basket) as EventsError."""
    while True:
        try:
            item = next(chunks)
        except StopIteration:
            return
        except EventsError:
            raise
        except Exception as err:  # noqa: BLE001 (any reader failure becomes an EventsError)
            raise EventsError(f"{where}: cannot read the events ({_brief(err)}); the file may be truncated or corrupt") from None
        yield item


def _first_problem(spec: _Spec, values: np.ndarray, entries: np.ndarray) -> tuple[int, str] | None:
    """(row, message) for the first bad value — not 0/1 for labels, not finite otherwise — or None."""
    bad = (values != 0) & (values != 1) if spec.role == "label" else ~np.isfinite(values)
    if not bad.any():
        return None
    i = int(np.argmax(bad))
    if spec.role == "label":
        return i, f"label '{spec.text}' must be 0 or 1, got {values[i]} at event {entries[i]}"
    return i, (f"{spec.role} '{spec.name}' is {values[i]} (not finite) at event {entries[i]}, one of {int(bad.sum())} in events "
               f"{entries[0]}…{entries[-1]}; fix or remove such events first")


def _read(program: _Program, specs: list[_Spec], step_size: int, stop: int | None,
          drop_incomplete: bool) -> tuple[list[np.ndarray], int, dict[str, int]]:
    """Evaluate the specs chunk by chunk; returns one array per spec, the number of events dropped
    (drop_incomplete) and, per spec, how many of them it left undefined."""
    source = program.source
    keys = sorted(set(program.keys.values()))
    parts: list[list[np.ndarray]] = [[] for _ in specs]
    dropped, undefined = 0, {}
    for start, n, chunk in _guarded(source.chunks(keys, step_size, stop), source.where):
        env = _Env(chunk, program.keys, program.aliases)
        values, missing = zip(*(program.evaluate(spec, env, n) for spec in specs))
        entries = start + np.arange(n)
        incomplete = np.logical_or.reduce(missing)
        if incomplete.any():
            if not drop_incomplete:
                spec, mask = next((s, m) for s, m in zip(specs, missing) if m.any())
                raise EventsError(f"{source.where}: {spec.role} '{spec.text}' is undefined at event {entries[np.argmax(mask)]} "
                                  f"(too few objects); pass drop_incomplete=True to drop such events")
            dropped += int(incomplete.sum())
            for spec, mask in zip(specs, missing):
                if mask.any():
                    undefined[spec.text] = undefined.get(spec.text, 0) + int(mask.sum())
            values = [v[~incomplete] for v in values]
            entries = entries[~incomplete]
        problems = [p for p in (_first_problem(spec, v, entries) for spec, v in zip(specs, values)) if p]
        if problems:
            raise EventsError(f"{source.where}: {min(problems)[1]}")
        for v, part in zip(values, parts):
            part.append(v)
    return [np.concatenate(p) if p else np.zeros(0) for p in parts], dropped, undefined


def _open(path: Path, tree: str | None, key: str | None, columns: Sequence[str] | None) -> _Source:
    suffix = path.suffix.lower()
    if suffix not in ROOT_SUFFIXES + HDF5_SUFFIXES + NPY_SUFFIXES:
        raise EventsError(f"{path}: unknown file type '{suffix}'; expected one of "
                          f"{', '.join(ROOT_SUFFIXES + HDF5_SUFFIXES + NPY_SUFFIXES)}")
    if tree is not None and suffix not in ROOT_SUFFIXES:
        raise EventsError(f"{path}: tree= is for ROOT files; for {suffix} files use " + ("key=" if suffix in HDF5_SUFFIXES else "columns="))
    if key is not None and suffix not in HDF5_SUFFIXES:
        raise EventsError(f"{path}: key= is for HDF5 files" + ("; use tree= to pick a ROOT tree" if suffix in ROOT_SUFFIXES else ""))
    if columns is not None:
        if isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
            raise EventsError(f"{path}: columns must be a list of column names, got {columns!r}")
        if suffix in ROOT_SUFFIXES:
            raise EventsError(f"{path}: columns= is for unnamed .npy/HDF5 arrays; ROOT branches have names: use those")
    if suffix in ROOT_SUFFIXES:
        return _RootSource(path, tree)
    if suffix in HDF5_SUFFIXES:
        return _open_hdf5(path, key, columns)
    return _npy_source(path, columns)


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise EventsError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def read_events(path: str | Path, mass: str, features: Sequence[str], *, tree: str | None = None, key: str | None = None,
                label: str | None = None, columns: Sequence[str] | None = None, step_size: int = 100_000,
                max_events: int | None = None, aliases: Mapping[str, str] | None = None,
                drop_incomplete: bool = False) -> Events:
    """Read events from a ROOT (.root), HDF5 (.h5, .hdf5) or numpy (.npy) file.

    Args:
        path: the file; its suffix picks the reader.
        mass: the resonant variable: a column, an expression, or ``name=expression``.
        features: the features, each like ``mass``, e.g. ``["mj1", "tau21=tau2j1/tau1j1"]``.
        tree: ROOT only: the TTree (or RNTuple); may be left out when the file holds one.
        key: HDF5 only: the group or dataset holding the table; may be left out when there is one.
        label: the column (or expression) of 0/1 truth labels (1 signal), if there is one.
        columns: names of the columns of an unnamed 2-D array (.npy, 2-D HDF5 dataset).
        step_size: events read at a time.
        max_events: read at most this many events (the first ones).
        aliases: names for expressions, usable in ``mass``, ``features``, ``label`` and each other.
        drop_incomplete: drop events that lack the objects an expression indexes (e.g. a second
            muon) instead of raising; the number dropped is logged.

    Returns:
        The events, with ``names`` the feature names (the part before ``=``, else the text).

    Raises:
        EventsError: a missing or unreadable file, tree, key, column or branch, a bad expression,
            a non-finite value or a label other than 0/1; the one-line message says what to do.

    The file layouts and the expression syntax are described in the module docstring.
    """
    path = Path(path)
    if isinstance(features, str) or not isinstance(features, Iterable):
        raise EventsError(f"features must be a non-empty list of column names or expressions, got {features!r}")
    features = list(features)
    if not features:
        raise EventsError("features must be a non-empty list of column names or expressions, got none")
    step_size = _positive(step_size, "step_size")
    stop = None if max_events is None else _positive(max_events, "max_events")
    if not path.exists():
        raise EventsError(f"{path}: file not found")
    if not path.is_file():
        raise EventsError(f"{path}: not a file")
    source = _open(path, tree, key, columns)
    try:
        program = _Program(source, aliases)
        specs = [program.spec(mass, "mass"), *(program.spec(f, "feature") for f in features)]
        if label is not None:
            specs.append(program.spec(label, "label"))
        names = [s.name for s in specs[1:len(features) + 1]]
        duplicate = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if duplicate is not None:
            raise EventsError(f"{source.where}: feature name '{duplicate}' appears twice; give each feature its own name (name=expression)")
        columns_read, dropped, undefined = _read(program, specs, step_size, stop, drop_incomplete)
    finally:
        source.close()
    if dropped:
        logger.warning("%s: dropped %d events with too few objects (drop_incomplete=True): %s", source.where, dropped,
                       ", ".join(f"{text!r} undefined for {n}" for text, n in undefined.items()))
    if not len(columns_read[0]):
        raise EventsError(f"{source.where}: no events read" + (f" ({dropped} dropped as incomplete)" if dropped else ""))
    features_array = np.column_stack(columns_read[1:len(features) + 1])
    labels = columns_read[-1].astype(np.int64) if label is not None else None
    events = Events(columns_read[0], features_array, names, specs[0].name, labels, str(path))
    logger.info("read %d events (mass %s, %d features) from %s", len(events), events.mass_name, len(names), source.where)
    return events


__all__ = ["FUNCTIONS", "Events", "EventsError", "count", "eta", "invariant_mass", "phi", "pt", "read_events"]
