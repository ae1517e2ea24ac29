"""Read this first: online performance — committed scores joined with delayed labels.

- `outcomes.py`  the pure part: what one joined (score, label) pair counts as (tp/fp/fn/tn)
                 and the per-(tier, model_version) counts with precision, recall, alert rate.
- `join.py`      the bounded join state behind one port (`JoinStore`): in process
                 (`MemoryJoinStore`, tests and dev) or Redis hashes with a TTL
                 (`RedisJoinStore`); a label may arrive before or after its score.
- `monitor.py`   `rung monitor`: consumes the scores and labels topics (read_committed, its
                 own group), feeds the join, exports `rung_labelled_scores_total` & co.
- `live_eval.py` `rung evaluate-live`: reads both topics back to their end and prints the
                 per-tier table of `rung evaluate` (AUC ROC, AP, Card Precision@100).

- `drift.py`     population stability index of features and scores against a model's
                 training reference (pure numpy): the worker's shadow thread feeds it after
                 each commit (`stream_app.live.shadow`), never the scoring path.

Nothing here is on the scoring path. The worker imports only `drift.py` (from its
post-commit shadow thread); only `live_eval.py` imports `scorers.lab` (the metric
functions), and only the CLI imports it.
"""
