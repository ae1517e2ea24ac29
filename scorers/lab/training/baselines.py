"""The handbook's baseline classifiers on rung's own data, under rung's clean protocol.

Logistic regression, decision trees, random forest and gradient boosting, each on the
primary's feature set (13 event + 14 online features, `Split.primary`), their
hyper-parameters chosen by average precision on the validation protocol
(`Dataset.valid_train` -> `Dataset.valid`) over the handbook's model-selection grids,
then refit on the training week and scored on the test week once.

The handbook's gradient boosting is XGBoost; rung uses scikit-learn's
`HistGradientBoostingClassifier` grown depth-wise like XGBoost (`max_leaf_nodes=None`,
`max_depth`, `max_iter` = n_estimators, `learning_rate`, L2 = 1 as XGBoost's default
`reg_lambda`), no early stopping. scikit-learn is a dev dependency: it is imported
inside the functions, and nothing on the serving path imports this module.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from scorers.lab.training.metrics import average_precision

F32 = npt.NDArray[np.float32]
Params = dict[str, Any]
SEED: Final = 0

# the handbook's model-selection grids (chapter "Model selection"); the depth-2 tree is
# the handbook's baseline tree, kept at its fixed depth
GRIDS: Final[dict[str, dict[str, tuple[Any, ...]]]] = {
    "logistic regression": {"C": (0.1, 1.0, 10.0, 100.0)},
    "decision tree (depth 2)": {"max_depth": (2,)},
    "decision tree": {"max_depth": (2, 3, 4, 5, 6, 7, 8, 9, 10, 20, 50)},
    "random forest": {"max_depth": (5, 10, 20, 50), "n_estimators": (25, 50, 100)},
    "gradient boosting": {"max_depth": (3, 6, 9), "learning_rate": (0.1, 0.3),
                          "n_estimators": (25, 50, 100)},
}
# grown once at the largest n_estimators; smaller ones are read off the first trees / stages
_STAGED: Final = ("random forest", "gradient boosting")


@dataclass(frozen=True, slots=True)
class Selection:
    name: str
    params: Params  # the chosen hyper-parameters
    valid_ap: float  # their validation AP
    grid: tuple[tuple[Params, float], ...]  # every candidate and its validation AP


def _build(name: str, params: Params) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    if name == "logistic regression":
        return make_pipeline(StandardScaler(),
                             LogisticRegression(C=params["C"], max_iter=2000))
    if name.startswith("decision tree"):
        return DecisionTreeClassifier(max_depth=params["max_depth"], random_state=SEED)
    if name == "random forest":
        return RandomForestClassifier(n_estimators=params["n_estimators"],
                                      max_depth=params["max_depth"], n_jobs=1,
                                      random_state=SEED)
    if name == "gradient boosting":
        return HistGradientBoostingClassifier(
            max_iter=params["n_estimators"], max_depth=params["max_depth"],
            learning_rate=params["learning_rate"], max_leaf_nodes=None, l2_regularization=1.0,
            early_stopping=False, random_state=SEED)
    raise KeyError(name)


def fit(name: str, params: Params, x: F32, y: F32) -> Any:
    return _build(name, params).fit(x, y.astype(np.int64))


def score(model: Any, x: F32) -> F32:
    return np.asarray(model.predict_proba(x)[:, 1], dtype=np.float32)


def _staged(name: str, model: Any, x: F32, sizes: tuple[int, ...]) -> Iterator[tuple[int, F32]]:
    """Scores of the first n trees (forest) or stages (boosting) for each n in sizes."""
    if name == "random forest":
        total = np.zeros(x.shape[0], dtype=np.float64)
        for i, tree in enumerate(model.estimators_, start=1):
            total += tree.predict_proba(x)[:, 1]
            if i in sizes:
                yield i, (total / i).astype(np.float32)
    else:
        for i, proba in enumerate(model.staged_predict_proba(x), start=1):
            if i in sizes:
                yield i, proba[:, 1].astype(np.float32)


def select(name: str, x: F32, y: F32, x_valid: F32, y_valid: F32) -> Selection:
    """Every grid point fit on (x, y), scored by AP on (x_valid, y_valid); the best kept
    (the first in grid order on a tie to 4 decimals)."""
    grid = GRIDS[name]
    results: list[tuple[Params, float]] = []
    if name in _STAGED:
        sizes = grid["n_estimators"]
        others = [k for k in grid if k != "n_estimators"]
        for values in itertools.product(*(grid[k] for k in others)):
            params = dict(zip(others, values, strict=True)) | {"n_estimators": max(sizes)}
            model = fit(name, params, x, y)
            for n, s in _staged(name, model, x_valid, sizes):
                results.append((params | {"n_estimators": n}, average_precision(y_valid, s)))
    else:
        for values in itertools.product(*grid.values()):
            params = dict(zip(grid, values, strict=True))
            results.append((params, average_precision(y_valid, score(fit(name, params, x, y),
                                                                     x_valid))))
    # APs equal to 4 decimals are a tie (BLAS threads move the last digits): first wins
    best = max(range(len(results)), key=lambda i: (round(results[i][1], 4), -i))
    return Selection(name, results[best][0], results[best][1], tuple(results))
