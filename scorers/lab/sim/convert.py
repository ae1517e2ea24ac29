"""Turn simulated rows into `topics.schemas.Transaction` and `Label` values."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import orjson

from scorers.lab.sim.labels import LABEL_KINDS, SimLabels
from scorers.lab.sim.simulator import SimData
from topics.schemas import CHANNELS, MERCHANT_CATEGORIES, Label, Transaction


def customer_ids(data: SimData) -> list[str]:
    return [f"C{c:06d}" for c in data.customer.tolist()]


def terminal_ids(data: SimData) -> list[str]:
    return [f"T{t:06d}" for t in data.terminal.tolist()]


def to_transactions(data: SimData, id_prefix: str = "sim",
                    time_offset_s: float = 0.0,
                    rows: npt.NDArray[np.int64] | None = None) -> list[Transaction]:
    """One `Transaction` per row (all rows, or `rows`), event time shifted by `time_offset_s`.

    transaction ids are `{id_prefix}-{row}`; currency is always EUR.
    """
    sel = np.arange(len(data)) if rows is None else np.asarray(rows, dtype=np.int64)
    times = (data.event_time_s[sel] + time_offset_s).tolist()
    custs = data.customer[sel].tolist()
    terms = data.terminal[sel].tolist()
    amounts = data.amount[sel].tolist()
    mccs = data.merchant_category[sel].tolist()
    chans = data.channel[sel].tolist()
    intl = data.is_international[sel].tolist()
    hist = data.has_international_history[sel].tolist()
    ages = data.account_age_days[sel].tolist()
    return [
        Transaction(
            transaction_id=f"{id_prefix}-{row}",
            event_time_s=float(times[i]),
            customer_id=f"C{custs[i]:06d}",
            terminal_id=f"T{terms[i]:06d}",
            amount=float(amounts[i]),
            currency="EUR",
            merchant_category=MERCHANT_CATEGORIES[mccs[i]],
            is_international=bool(intl[i]),
            has_international_history=bool(hist[i]),
            account_age_days=int(ages[i]),
            channel=CHANNELS[chans[i]],
        )
        for i, row in enumerate(sel.tolist())
    ]


def to_payloads(data: SimData, lo: int, hi: int, id_prefix: str = "sim",
                event_time_s: float | None = None) -> tuple[list[bytes], list[bytes]]:
    """(keys, JSON values) of rows `lo:hi` in bulk, the values as `topics.codec` encodes them.

    Keys are the transaction ids (`{id_prefix}-{row}`); `event_time_s`, when given,
    stamps every row (the produce time), otherwise each row keeps its own time.
    """
    sl = slice(lo, hi)
    ids = [f"{id_prefix}-{row}" for row in range(lo, hi)]
    times = (np.full(hi - lo, event_time_s) if event_time_s is not None
             else data.event_time_s[sl]).tolist()
    mccs, chans = MERCHANT_CATEGORIES, CHANNELS
    values = [
        orjson.dumps({
            "transaction_id": tx_id, "event_time_s": t, "customer_id": f"C{c:06d}",
            "terminal_id": f"T{term:06d}", "amount": a, "currency": "EUR",
            "merchant_category": mccs[m], "is_international": i,
            "has_international_history": h, "account_age_days": age, "channel": chans[ch],
        })
        for tx_id, t, c, term, a, m, i, h, age, ch in zip(
            ids, times, data.customer[sl].tolist(), data.terminal[sl].tolist(),
            data.amount[sl].tolist(), data.merchant_category[sl].tolist(),
            data.is_international[sl].tolist(), data.has_international_history[sl].tolist(),
            data.account_age_days[sl].tolist(), data.channel[sl].tolist(), strict=True)
    ]
    return [i.encode() for i in ids], values


def to_labels(data: SimData, labels: SimLabels, id_prefix: str = "sim",
              time_offset_s: float = 0.0) -> list[Label]:
    """One `Label` per row of `labels` (in their order: label time), for the transactions
    `to_transactions(data, id_prefix, time_offset_s)` makes; times shifted alike."""
    rows = labels.row.tolist()
    at = (labels.labelled_at_s + time_offset_s).tolist()
    event_s = (data.event_time_s[labels.row] + time_offset_s).tolist()
    terms = data.terminal[labels.row].tolist()
    return [Label(transaction_id=f"{id_prefix}-{row}", kind=LABEL_KINDS[k],
                  labelled_at_s=float(a), terminal_id=f"T{term:06d}", event_time_s=float(e))
            for row, k, a, e, term in zip(rows, labels.kind.tolist(), at, event_s, terms,
                                          strict=True)]
