"""Read this first: the lab: the transaction simulator, training and offline evaluation.

Nothing on the scoring path imports this package (the ladder, the tiers, the model
adapters and the feature definitions stay free of it and of matplotlib); a unit test
checks it. `rung train` and `rung evaluate` are its entry points.
"""
