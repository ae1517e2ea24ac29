"""Read this first: `rung run`, the live confluent-kafka worker.

`worker.py` is the consume loop (collect a micro-batch, hand it to `stream_app.pipeline`);
`runner.py` wires one worker process (settings, metrics, HTTP, ladder).
"""
