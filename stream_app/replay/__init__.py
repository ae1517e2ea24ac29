"""Read this first: `rung replay`, bounded exactly-once re-scoring off the live group.

`run.py` is the loop, `range.py`/`state.py` the snapshotted range kept in the committed
offsets, `scoring.py` the replay-mode ladder, `compare.py` decision-flip comparison.
"""
