"""Classifiers with ensembling and cross-fitting, as CATHODE and CWoLa use them: neural networks
(epoch-ensembled) or gradient-boosted decision trees (an ensemble of them).

A classifier trained to tell sample A (label 1) from sample B (label 0), with each class given
equal total weight, approaches c(x) = p_A(x)/(p_A(x) + p_B(x)), a monotone function of the
likelihood ratio p_A/p_B — the optimal anomaly score when A is data and B is background.

Training is noisy at low S/B, so (as in the CATHODE paper) each classifier keeps the parameters
of its ``top_epochs`` epochs of lowest validation loss and averages their predictions. With
cross-fitting (:func:`cross_fit`) the events of A are split into K folds; the classifier that
scores fold k never saw it, so every event of A gets an out-of-sample score — what a bump hunt
on the same events needs — and new events are scored by the mean over the K classifiers.

Boosted trees (``ClassifierSettings(model="trees")``: scikit-learn's histogram gradient boosting,
``trees`` models with different early-stopping splits, averaged) learn a small data-vs-background
difference from few events better than a network does (Finke et al. 2023, "Back to the roots");
measured on the LHCO arrays, see the README. They train in seconds on a CPU and ignore ``device``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..atomic import dump, load_container
from ..device import resolve_device
from ..nets import MLP
from ..outputs import finite
from .preprocess import Standardizer

logger = logging.getLogger(__name__)

CLASSIFIER_MODELS = ("nn", "trees")


@dataclass
class ClassifierSettings:
    """How each classifier is trained: ``model`` "nn" (a network: ``hidden``, ``epochs``,
    ``batch_size``, ``lr``, ``weight_decay``, ``top_epochs``) or "trees" (``trees`` boosted-tree
    models of at most ``max_iter`` boosting rounds each, early-stopped on a ``val_fraction`` split)."""

    model: str = "nn"
    hidden: Sequence[int] = (64, 64, 64)
    epochs: int = 40
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    top_epochs: int = 5  # the epochs of lowest validation loss whose predictions are averaged
    val_fraction: float = 0.2
    seed: int = 0
    trees: int = 10  # boosted-tree models averaged per classifier (model "trees")
    max_iter: int = 200  # boosting rounds per tree model at most (early stopping ends most sooner)

    def __post_init__(self) -> None:
        if self.model not in CLASSIFIER_MODELS:
            raise ValueError(f"the classifier model must be one of {CLASSIFIER_MODELS}, got {self.model!r}")
        if self.trees < 1 or self.max_iter < 1:
            raise ValueError(f"need trees ≥ 1 and max_iter ≥ 1, got {self}")
        if self.epochs < 1 or self.batch_size < 1 or not 1 <= self.top_epochs <= self.epochs:
            raise ValueError(f"need epochs ≥ 1, batch_size ≥ 1 and 1 ≤ top_epochs ≤ epochs, got {self}")
        if not 0 < self.val_fraction < 1 or self.lr <= 0:
            raise ValueError(f"need 0 < val_fraction < 1 and lr > 0, got {self}")


@dataclass
class EpochEnsemble:
    """A classifier's input scaling and the parameters of its best epochs; ``predict`` averages them."""

    scaler: Standardizer
    network: nn.Module
    states: list[dict] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)

    @torch.no_grad()
    def predict(self, x: np.ndarray, batch: int = 65_536) -> np.ndarray:
        """Mean over the kept epochs of the predicted probability of label 1."""
        x = torch.as_tensor(self.scaler.transform(x), dtype=torch.float32)
        device = next(self.network.parameters()).device
        total = np.zeros(len(x))
        for state in self.states:
            self.network.load_state_dict(state)
            self.network.eval()
            total += np.concatenate([torch.sigmoid(self.network(piece.to(device))).squeeze(1).cpu().numpy()
                                     for piece in x.split(batch)]) if len(x) else np.zeros(0)
        return total / len(self.states)

    def save(self, path: str | Path, extra: dict | None = None) -> None:
        """Write the classifier (and ``extra`` plain data) atomically, as container kind "classifier"."""
        dump({"scaler": self.scaler.state(), "states": self.states, "val_losses": self.val_losses,
              "in_features": self.network[0].in_features, "hidden": [m.out_features for m in self.network if isinstance(m, nn.Linear)][:-1],
              "extra": extra or {}}, path, "classifier")

    @classmethod
    def load(cls, path: str | Path) -> tuple["EpochEnsemble", dict]:
        """The classifier saved at ``path`` and the ``extra`` data saved with it."""
        payload = load_container(path, "classifier")
        network = MLP(payload["in_features"], 1, payload["hidden"], "relu")
        return cls(Standardizer.from_state(payload["scaler"]), network, payload["states"], payload["val_losses"]), payload["extra"]


@dataclass
class BoostedTrees:
    """An ensemble of gradient-boosted tree classifiers; ``predict`` averages their probabilities."""

    members: list = field(default_factory=list)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Mean over the models of the predicted probability of label 1."""
        x = np.asarray(x, dtype=np.float64)
        if not len(x):
            return np.zeros(0)
        return np.mean([member.predict_proba(x)[:, 1] for member in self.members], axis=0)


def _train_trees(x: np.ndarray, y: np.ndarray, s: ClassifierSettings) -> BoostedTrees:
    from sklearn.ensemble import HistGradientBoostingClassifier

    weights = _weights(y)
    members = []
    for i in range(s.trees):  # the models differ in their early-stopping split: averaging them lowers the variance
        model = HistGradientBoostingClassifier(max_iter=s.max_iter, early_stopping=True, validation_fraction=s.val_fraction,
                                               n_iter_no_change=10, random_state=s.seed * 1000 + i)
        members.append(model.fit(x, y, sample_weight=weights))
    return BoostedTrees(members)


def _weights(y: np.ndarray) -> np.ndarray:
    """Per-event weights giving each class half the total weight."""
    n1, n0 = y.sum(), (1 - y).sum()
    if n1 == 0 or n0 == 0:
        raise ValueError("a classifier needs events of both classes")
    return np.where(y == 1, len(y) / (2 * n1), len(y) / (2 * n0))


def train_classifier(x: np.ndarray, y: np.ndarray, settings: ClassifierSettings | None = None,
                     device: str | torch.device = "auto", progress: bool = False,
                     desc: str = "classifier") -> EpochEnsemble | BoostedTrees:
    """Train a binary classifier on x (events, features) with labels y ∈ {0, 1}, classes
    balanced by weight, on a seeded split into training and validation events."""
    s = settings or ClassifierSettings()
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64).ravel()
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"need x of shape (events, features) and one label per event, got {x.shape} and {y.shape}")
    if s.model == "trees":
        return _train_trees(x, y, s)
    device = resolve_device(device)
    rng = np.random.default_rng(s.seed)
    order = rng.permutation(len(x))
    n_val = max(1, int(round(s.val_fraction * len(x))))
    val, train = order[:n_val], order[n_val:]
    scaler = Standardizer.fit(x[train])
    torch.manual_seed(s.seed)
    network = MLP(x.shape[1], 1, s.hidden, "relu").to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=s.lr, weight_decay=s.weight_decay)

    def tensors(rows: np.ndarray) -> tuple[torch.Tensor, ...]:
        return tuple(torch.as_tensor(a, dtype=torch.float32, device=device)
                     for a in (scaler.transform(x[rows]), y[rows], _weights(y[rows])))

    xt, yt, wt = tensors(train)
    xv, yv, wv = tensors(val)
    loss_fn = nn.BCEWithLogitsLoss(reduction="none")
    generator = torch.Generator().manual_seed(s.seed)
    history: list[tuple[float, dict]] = []
    for _ in tqdm(range(s.epochs), desc=desc, unit="epoch", disable=not progress, leave=False):
        network.train()
        for rows in torch.randperm(len(xt), generator=generator).split(s.batch_size):
            rows = rows.to(device)
            loss = (loss_fn(network(xt[rows]).squeeze(1), yt[rows]) * wt[rows]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        network.eval()
        with torch.no_grad():
            val_loss = float((loss_fn(network(xv).squeeze(1), yv) * wv).mean())
        history.append((val_loss, copy.deepcopy(network.state_dict())))
    best = sorted(history, key=lambda item: item[0])[: s.top_epochs]
    return EpochEnsemble(scaler, network, [state for _, state in best], [loss for loss, _ in best])


@dataclass
class CrossFit:
    """K classifiers, classifier k trained without fold k of the label-1 events."""

    members: list[EpochEnsemble | BoostedTrees]
    out_of_fold: np.ndarray  # the score of every label-1 event by the classifier that never saw it

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Score new events: the mean over the K classifiers."""
        return np.mean([member.predict(x) for member in self.members], axis=0)

    def predict_one(self, x: np.ndarray, seed: int = 0) -> np.ndarray:
        """Score new events each by one of the K classifiers, drawn at random (seeded): the scores
        are then distributed as ``out_of_fold`` is (the mean over K classifiers is narrower), so a
        threshold set on the out-of-fold scores keeps the same fraction of like events."""
        x = np.asarray(x, dtype=np.float64)
        fold = np.random.default_rng(seed).integers(len(self.members), size=len(x))
        out = np.zeros(len(x))
        for k, member in enumerate(self.members):
            chosen = fold == k
            out[chosen] = member.predict(x[chosen])
        return out


def cross_fit(x_one: np.ndarray, x_zero: np.ndarray, folds: int = 5, settings: ClassifierSettings | None = None,
              device: str | torch.device = "auto", progress: bool = True, desc: str = "classifiers",
              checkpoint: str | Path | None = None) -> CrossFit:
    """Train ``folds`` classifiers of x_one (label 1) against x_zero (label 0), each without one
    fold of both samples; the held-out fold of x_one is scored by the classifier that left it out.

    With ``checkpoint`` (a directory) each finished fold is saved there as ``fold<k>.nfapps``, and
    a later call with the same data and settings loads the folds it finds instead of training
    them again: an interrupted run loses at most the fold in progress. (Boosted trees, which train
    in seconds, are not kept.)"""
    s = settings or ClassifierSettings()
    if folds < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, got {folds}")
    if len(x_one) < 2 * folds or len(x_zero) < 2 * folds:
        raise ValueError(f"too few events for {folds} folds: {len(x_one)} and {len(x_zero)}")
    rng = np.random.default_rng(s.seed)
    fold_one = rng.permutation(len(x_one)) % folds
    fold_zero = rng.permutation(len(x_zero)) % folds
    out = np.zeros(len(x_one))
    members = []
    signature = {"folds": folds, "settings": finite(s.__dict__),
                 "sizes": [len(x_one), len(x_zero)], "sums": [float(np.sum(x_one)), float(np.sum(x_zero))]}
    if s.model == "trees":
        checkpoint = None
    if checkpoint is not None:
        Path(checkpoint).mkdir(parents=True, exist_ok=True)
    for k in tqdm(range(folds), desc=desc, unit="fold", disable=not progress):
        saved = Path(checkpoint) / f"fold{k}.nfapps" if checkpoint is not None else None
        member = None
        if saved is not None and saved.is_file():
            member, extra = EpochEnsemble.load(saved)
            if extra.get("signature") != signature:
                raise ValueError(f"{saved} was trained on other events or settings: use another output directory or delete it")
            logger.info("classifier %d/%d loaded from %s", k + 1, folds, saved)
        if member is None:
            x = np.concatenate([x_one[fold_one != k], x_zero[fold_zero != k]])
            y = np.r_[np.ones((fold_one != k).sum()), np.zeros((fold_zero != k).sum())]
            member = train_classifier(x, y, ClassifierSettings(**{**s.__dict__, "seed": s.seed * 1000 + k}), device)
            if saved is not None:
                member.save(saved, {"signature": signature})
        out[fold_one == k] = member.predict(x_one[fold_one == k])
        members.append(member)
        if isinstance(member, EpochEnsemble):
            logger.info("classifier %d/%d: best validation loss %.5f", k + 1, folds, member.val_losses[0])
    return CrossFit(members, out)


__all__ = ["CLASSIFIER_MODELS", "ClassifierSettings", "EpochEnsemble", "BoostedTrees", "train_classifier", "CrossFit",
           "cross_fit"]
