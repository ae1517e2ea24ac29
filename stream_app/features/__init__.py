"""Read this first: the live feature feeds, applied exactly once after Kafka committed.

- `applier.py`: `OffsetApplier`, the watermark logic for one topic (plan ranges from
  the stored watermark, fill a gap from Kafka first, bounded, back off on failure);
  pure apart from the store and reader it is given.
- `reader.py`: `KafkaRangeReader`, an assign()-only read_committed consumer that
  reads a partition's missing range back (no group, never commits).
- `events.py`: the transactions feed the live worker applies after each committed
  batch (and, when idle, up to the group's committed offsets).
- `labels.py`: the label feed, a thread with its own consumer group on
  `<prefix>.labels` folding fraud labels into the terminal fraud counts.

Nothing here scores; nothing here is imported by `scorers`.
"""
