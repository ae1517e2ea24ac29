"""Turn simulated rows into `topics.schemas.Transaction` values."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from scorers.lab.sim.simulator import SimData
from topics.schemas import CHANNELS, MERCHANT_CATEGORIES, Transaction


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
