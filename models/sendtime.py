"""Send-time optimization: each customer's best hour and weekday to be contacted, learned from when they
open and click, falling back to their segment's pattern and then to everyone's.

Hours are UTC hours (the messaging platforms' timestamps); a per-customer time zone would come from
the profile's state and is left to the activation step.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_KERNEL = np.array([0.25, 0.5, 0.25])  # neighbouring hours share evidence (circularly)


def _smooth(hist: np.ndarray) -> np.ndarray:
    padded = np.concatenate([hist[..., -1:], hist, hist[..., :1]], axis=-1)
    return sum(w * padded[..., i : i + hist.shape[-1]] for i, w in enumerate(_KERNEL))


def best_send_times(
    messages: pd.DataFrame,
    segments: pd.Series,
    customers: pd.Series,
    min_customer_opens: int = 3,
    min_segment_opens: int = 30,
    prior_weight: float = 2.0,
) -> pd.DataFrame:
    """customer_id, best_hour (0-23), best_weekday, basis (customer | segment | global), opens.

    `messages`: customer_id, at (UTC timestamp), event (sent | open | click); `segments`: segment per
    customer id. A customer with `min_customer_opens` opens or clicks gets their own histogram,
    shrunk towards their segment's with `prior_weight` pseudo-opens; otherwise their segment's
    pattern when it has `min_segment_opens`, else the global one. The weekday is the one with the
    best open rate (opens per send), shrunk the same way.
    """
    m = messages[messages["event"].isin(["sent", "open", "click"])].copy()
    at = pd.to_datetime(m["at"], utc=True)
    m["hour"], m["weekday"] = at.dt.hour, at.dt.weekday
    m["segment"] = m["customer_id"].map(segments).fillna("none")
    opens = m[m["event"] != "sent"]
    sends = m[m["event"] == "sent"]

    def hist(df, by, col, size):
        h = df.groupby([by, col]).size().unstack(fill_value=0).reindex(columns=range(size), fill_value=0)
        return h.astype(float)

    g_hour = _smooth(np.bincount(opens["hour"], minlength=24).astype(float))
    g_opens_wd = np.bincount(opens["weekday"], minlength=7).astype(float)
    g_sends_wd = np.bincount(sends["weekday"], minlength=7).astype(float)
    g_rate = (g_opens_wd + 1) / (g_sends_wd + 2)
    seg_hour, seg_open_wd = hist(opens, "segment", "hour", 24), hist(opens, "segment", "weekday", 7)
    seg_send_wd = hist(sends, "segment", "weekday", 7).reindex(seg_open_wd.index, fill_value=0)
    c_hour, c_open_wd = hist(opens, "customer_id", "hour", 24), hist(opens, "customer_id", "weekday", 7)
    c_send_wd = hist(sends, "customer_id", "weekday", 7)

    # The prior of each segment (its own pattern when it has enough opens, else the global one).
    seg_ok = seg_hour.sum(axis=1) >= min_segment_opens
    prior_hour = pd.DataFrame(
        np.where(seg_ok.to_numpy()[:, None], _smooth(seg_hour.to_numpy()), g_hour), index=seg_hour.index
    )
    prior_rate = pd.DataFrame(
        np.where(seg_ok.to_numpy()[:, None], ((seg_open_wd + 1) / (seg_send_wd + 2)).to_numpy(), g_rate),
        index=seg_open_wd.index,
    )
    ids = pd.Index(customers)
    seg_of = ids.map(lambda c: segments.get(c, "none"))
    known = seg_of.isin(prior_hour.index)
    p_hour = np.where(known[:, None], prior_hour.reindex(seg_of).to_numpy(), g_hour)
    p_rate = np.where(known[:, None], prior_rate.reindex(seg_of).to_numpy(), g_rate)
    p_hour = p_hour / p_hour.sum(axis=1, keepdims=True)
    own = c_hour.reindex(ids, fill_value=0).to_numpy()
    n = own.sum(axis=1)
    h = _smooth(own)
    h = h / np.maximum(h.sum(axis=1, keepdims=True), 1e-12) * n[:, None]
    o = c_open_wd.reindex(ids, fill_value=0).to_numpy()
    s = c_send_wd.reindex(ids, fill_value=0).to_numpy()
    mine = n >= min_customer_opens
    hour = np.where(mine, np.argmax(h + prior_weight * p_hour, axis=1), np.argmax(p_hour, axis=1))
    rate = (o + prior_weight * p_rate) / (s + prior_weight)
    weekday = np.where(mine, np.argmax(rate, axis=1), np.argmax(p_rate, axis=1))
    seg_basis = np.where(known & seg_of.map(lambda g: bool(seg_ok.get(g, False))), "segment", "global")
    return pd.DataFrame(
        {
            "customer_id": ids,
            "best_hour": hour.astype(int),
            "best_weekday": np.array(WEEKDAYS)[weekday],
            "basis": np.where(mine, "customer", seg_basis),
            "opens": n.astype(int),
        }
    )


def hour_accuracy(predicted: pd.Series, actual: pd.Series, tolerance: int = 1) -> float:
    """Share of predictions within `tolerance` hours (circularly) of the actual favourite hour."""
    d = np.abs(predicted.to_numpy(int) - actual.to_numpy(int)) % 24
    return float((np.minimum(d, 24 - d) <= tolerance).mean())
