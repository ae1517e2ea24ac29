"""Read this first: the transaction simulator.

A numpy re-implementation, written from its documented parameters, of the
transaction generator of the "Reproducible Machine Learning for Credit Card
Fraud Detection" handbook (Le Borgne et al.), extended with the fields rung's
rules and fallback read (merchant category, channel, international flags,
account age) and a fourth, rung-specific fraud scenario that gives them signal.

- `simulator`: `SimConfig`, `simulate(config, seed) -> SimData` (columnar).
- `convert`: `to_transactions(data)` turns rows into `topics.schemas.Transaction`,
  `to_labels(data, labels)` labels into `topics.schemas.Label`.
- `labels`: `simulate_labels(data, LabelConfig, seed) -> SimLabels`: one delayed label
  per fraud, confirmed-genuine labels for a sample, delays within the features' 7 days.
- `demo`: `demo_stream(...)`, `warm_feature_store(...)`, `warm_from_data(...)` for the live demo.
- `load`: `generate_load(n_events, LoadConfig, seed)`: N live events fast, with skew,
  and history only when asked (`WARM_HISTORY_DAYS`), for load generation.

Pure numpy; imports nothing from `stream_app` or any Kafka client.
"""

from scorers.lab.sim.convert import to_transactions
from scorers.lab.sim.simulator import HANDBOOK_START_S, SCENARIOS, SimConfig, SimData, simulate

__all__ = [
    "HANDBOOK_START_S",
    "SCENARIOS",
    "SimConfig",
    "SimData",
    "simulate",
    "to_transactions",
]
