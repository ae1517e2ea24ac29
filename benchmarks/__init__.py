"""Read this first: rung's benchmarks (issue 9). Not tests: they time things.

- `run` — `make bench`: end-to-end throughput and latency on a real Kafka + Redis
  (passthrough ceiling, rung healthy / breaker open / hanging primary / faust /
  replay), plus the micro-benchmarks; one JSON file in `benchmarks/results/`.
- `soak` — `make bench-soak`: RSS of a worker at 50% load for >= 10 minutes.
- `gpu.sh` / `gpu` — the GPU checks (forward vs batch, pinned transfers, a real
  CUDA fault caught by the ladder); a "no CUDA device" result without a GPU.
- `report` — the pure pieces: percentiles, ratios, goals, machine info, JSON.
Everything slow is measured against a baseline taken in the same run.
"""
