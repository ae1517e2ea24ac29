"""Read this first: the feature definitions shared by training and serving.

- `event`: event-only features (the fallback's input; the first part of the
  primary's input), from one transaction, no state.
- `online`: the online aggregates (customer and delayed terminal windows), their
  offline computation for training, and `online_features_from_sums`, which the
  feature store (`scorers.feature_store`) calls too — one definition, no skew.

The primary's input is `EVENT_FEATURE_NAMES + ONLINE_FEATURE_NAMES`, in that
order (`PRIMARY_FEATURE_NAMES`, `primary_features`). Pure numpy; no I/O here.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from scorers.features.event import EVENT_FEATURE_NAMES, event_feature_matrix, event_features
from scorers.features.online import (
    ONLINE_FEATURE_NAMES,
    WindowSums,
    offline_online_features,
    online_features_from_sums,
)

PRIMARY_FEATURE_NAMES: Final[tuple[str, ...]] = EVENT_FEATURE_NAMES + ONLINE_FEATURE_NAMES
FALLBACK_FEATURE_NAMES: Final[tuple[str, ...]] = EVENT_FEATURE_NAMES


def primary_features(event: npt.NDArray[np.float32],
                     online: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The primary's input matrix: event features, then online features."""
    return np.concatenate([event, online], axis=1).astype(np.float32, copy=False)


__all__ = [
    "EVENT_FEATURE_NAMES",
    "FALLBACK_FEATURE_NAMES",
    "ONLINE_FEATURE_NAMES",
    "PRIMARY_FEATURE_NAMES",
    "WindowSums",
    "event_feature_matrix",
    "event_features",
    "offline_online_features",
    "online_features_from_sums",
    "primary_features",
]
