"""Density-based resonant anomaly search in HEP events (ANODE, CATHODE, LaCATHODE, CWoLa).

The pieces, each in its own module: event input from ROOT, HDF5 and .npy (:mod:`.readers`), a
synthetic LHCO-like generator with exact densities (:mod:`.synthetic`), preprocessing
(:mod:`.preprocess`), the conditional background density (:mod:`.density`), classifiers
(:mod:`.classifier`), the methods (:mod:`.methods`), figures of merit (:mod:`.metrics`), the bump
hunt (:mod:`.bumphunt`) and the search job that ties them together (:mod:`.search`)::

    from nfapps.anomaly import read_events, run_search, SearchSettings
    events = read_events("events.h5", mass="mjj", features=["mj1", "delta_mj", "tau21_1", "tau21_2"], label="label")
    summary = run_search(events, "results/", SearchSettings(sr=(3.3, 3.7), method="cathode"))
"""

from .bumphunt import bump_hunt, fit_sidebands, local_significance, sculpting
from .density import ConditionalDensity, DensitySettings
from .methods import anode, cathode, cwola, lacathode, idealized, supervised, two_sample_auc
from .metrics import auc, max_sic, roc
from .readers import Events, EventsError, read_events
from .search import SearchSettings, run_search
from .synthetic import DijetModel, make_dataset, n_signal_for

__all__ = [
    "Events", "EventsError", "read_events", "DijetModel", "make_dataset", "n_signal_for", "ConditionalDensity",
    "DensitySettings", "anode", "cathode", "lacathode", "cwola", "idealized", "supervised", "two_sample_auc", "auc", "max_sic", "roc",
    "bump_hunt", "fit_sidebands", "local_significance", "sculpting", "SearchSettings", "run_search",
]
