"""Read this first: rung's Kafka edge.

The folders follow the data path of one record:

- `kafka/`   the client edge: librdkafka configs (`clients`), the error policy
             (`errors`), bytes <-> records (`records`), one batch = one transaction
             (`commit`), topic admin, the credentials check, read-back.
- `pipeline.py` the one batch pipeline every runtime calls:
             decode -> deadline -> score -> route -> commit -> account.
- `wiring.py` builds the scoring ladder (`scorers`) from settings.
- `live/`    `rung run`: the confluent-kafka worker loop and its process wiring.
- `replay/`  `rung replay`: bounded, exactly-once re-scoring off the live group.
- `faust_runtime.py` the same pipeline inside a faust-streaming agent (optional extra).
- `ops/`     operator tools: the fault-injection switchboard, `rung top`.
- `cli/`     the `rung` command line (thin: it parses options and calls the above).
- `devstack/` local development only (Kafka + Redis stack, demo, load generation,
             worker child processes). No production module imports it.
- shared: `config.py` (settings), `logs.py`, `metrics.py` (the only prometheus
  import), `http.py` (/metrics, /healthz, /readyz, /admin/faults).

What must not live here: scoring logic. Anything that decides a score belongs
in `scorers`; anything that two processes must agree on belongs in `topics`.
"""
