"""The built-in tiers, one module each: cache, primary, fallback, rules.

Each takes its name from `topics.schemas.Tier` (the one place the built-in names
are written); a tier defined elsewhere names itself. `model_run` holds the model
helpers the model tiers share (bulkhead call, error classes, bisection,
post-validation).
"""
