"""The run report's plots: matplotlib figures rendered to inline SVG (no files, no JavaScript)."""

from __future__ import annotations

import io

import pandas as pd

BLUE, RED, GREY, GREEN = "#3b6ea5", "#c0392b", "#9aa5b1", "#2e8b57"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "svg.fonttype": "none",
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "figure.dpi": 96,
        }
    )
    return plt


def _svg(fig) -> str:
    out = io.StringIO()
    fig.savefig(out, format="svg", bbox_inches="tight")
    _plt().close(fig)
    text = out.getvalue()
    return text[text.index("<svg") :]  # drop the XML prologue: the SVG goes inline in the HTML


def ingestion(df: pd.DataFrame) -> str:
    """Per source: rows in the day's batch (log scale: sources differ by orders of magnitude) and the
    share of them quarantined, side by side."""
    plt = _plt()
    df = df.sort_values("read")
    fig, (rows, share) = plt.subplots(
        1, 2, sharey=True, figsize=(8, 0.22 * len(df) + 0.9), gridspec_kw={"width_ratios": [3, 2]}
    )
    rows.barh(df["source"], df["read"].where(df["read"] > 0), color=BLUE)  # no bar for an empty batch
    rows.set_xscale("log")
    rows.set_xlabel("rows read (log scale)")
    pct = 100 * df["quarantine_share"]
    share.barh(df["source"], pct, color=RED)
    for y, (v, q) in enumerate(zip(pct, df["quarantined"], strict=True)):
        if q:
            share.text(v, y, f" {q:,}", va="center", fontsize=7)
    share.set_xlabel("quarantined (% of rows; labels: rows)")
    share.margins(x=0.2)
    return _svg(fig)


def bars(df: pd.DataFrame, label: str, value: str, title: str, color: str = BLUE, log: bool = False) -> str:
    plt = _plt()
    df = df.sort_values(value)
    fig, ax = plt.subplots(figsize=(3.6, 0.24 * len(df) + 0.9))
    ax.barh(df[label].astype(str), df[value], color=color)
    for y, v in enumerate(df[value]):
        ax.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
    if log:
        ax.set_xscale("log")
    ax.set_title(title, loc="left", fontsize=10)
    ax.margins(x=0.25)
    return _svg(fig)


def cluster_sizes(df: pd.DataFrame) -> str:
    """How many customers have 1, 2, 3… identity records (log scale)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 2.6))
    ax.bar(df["records"].astype(int), df["customers"], color=BLUE)
    ax.set_yscale("log")
    ax.set_xlabel("identity records per customer")
    ax.set_ylabel("customers (log)")
    return _svg(fig)


def movements(moves: pd.DataFrame) -> str:
    """Lifecycle stage before → after as a heatmap with counts."""
    plt = _plt()
    grid = moves.pivot_table(index="before", columns="after", values="customers", aggfunc="sum", fill_value=0)
    fig, ax = plt.subplots(figsize=(0.9 * len(grid.columns) + 2, 0.45 * len(grid) + 1))
    ax.imshow(grid.to_numpy(), cmap="Blues", aspect="auto")
    ax.set_xticks(range(len(grid.columns)), grid.columns, rotation=30, ha="right")
    ax.set_yticks(range(len(grid.index)), grid.index)
    ax.set_xlabel("stage now")
    ax.set_ylabel("stage at the previous scoring")
    peak = grid.to_numpy().max() or 1
    for i, row in enumerate(grid.to_numpy()):
        for j, v in enumerate(row):
            if v:
                ax.text(
                    j,
                    i,
                    f"{v:,}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if v > peak / 2 else "black",
                )
    ax.spines[:].set_visible(False)
    return _svg(fig)


def item_concentration(per_item: pd.Series, catalog: int | None) -> str:
    """How often each item is recommended, most recommended first (a long tail is healthy)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 2.6))
    ax.plot(range(1, len(per_item) + 1), per_item.to_numpy(), color=BLUE)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("items, by how often they are recommended (log)")
    ax.set_ylabel("personalized slots (log)")
    if catalog:
        ax.axvline(catalog, color=GREY, linestyle="--", linewidth=1)
        ax.text(catalog, ax.get_ylim()[1], " catalog", va="top", fontsize=8, color=GREY)
    return _svg(fig)


LIFT_AXIS = (-100, 200)  # the forest plot's x range at most, in %


def lifts(df: pd.DataFrame, title: str) -> str:
    """A forest plot: each comparison's relative lift with its interval (CUPED's when it has one)."""
    plt = _plt()
    df = df.reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(6.4, 0.32 * len(df) + 1.0))
    # One tiny experiment's interval (-600%, +1000%) must not squash the others: the axis stops at
    # LIFT_AXIS and a cut interval ends in an arrow.
    left = max(min(df["low"].min() * 100, 0), LIFT_AXIS[0])
    right = min(max(df["high"].max() * 100, 0), LIFT_AXIS[1])
    cut = False
    for y, r in df.iterrows():
        lo, mid, hi = r["low"] * 100, r["lift"] * 100, r["high"] * 100
        color = "#207227" if lo > 0 else "#a61b1b" if hi < 0 else "#52606d"
        ax.plot([max(lo, left), min(hi, right)], [y, y], color=color, lw=2)
        if left <= mid <= right:
            ax.plot([mid], [y], "o", color=color, ms=5)
        for end, edge, marker in ((lo, left, "<"), (hi, right, ">")):
            if (end < edge) if marker == "<" else (end > edge):
                ax.plot([edge], [y], marker, color=color, ms=6)
                cut = True
    ax.axvline(0, color="#9aa5b1", lw=1, ls="--")
    pad = (right - left) * 0.03 or 1
    ax.set_xlim(left - pad, right + pad)
    ax.set_yticks(range(len(df)), df["label"], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(
        "relative lift, % (95% interval"
        + (f"; axis cut at {LIFT_AXIS[0]}% and +{LIFT_AXIS[1]}%)" if cut else ")"),
        fontsize=8,
    )
    ax.set_title(title, loc="left", fontsize=10)
    return _svg(fig)


def attribution(df: pd.DataFrame) -> str:
    """Each channel's share of the period's conversions under every attribution model."""
    plt = _plt()
    table = df.pivot_table(index="channel", columns="model", values="share", aggfunc="sum").fillna(0.0)
    table = table.loc[table.max(axis=1).sort_values().index]
    models = [
        m
        for m in ("first_touch", "last_touch", "linear", "position_based", "time_decay", "markov")
        if m in table
    ]
    fig, ax = plt.subplots(figsize=(6.4, 0.55 * len(table) + 1.2))
    height = 0.8 / max(1, len(models))
    for i, m in enumerate(models):
        ys = [y + (i - (len(models) - 1) / 2) * height for y in range(len(table))]
        ax.barh(ys, table[m] * 100, height=height, label=m.replace("_", " "))
    ax.set_yticks(range(len(table)), table.index, fontsize=8)
    ax.set_xlabel("share of conversions, %", fontsize=8)
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    ax.set_title("Credit per channel by attribution model", loc="left", fontsize=10)
    return _svg(fig)


def cadence(df: pd.DataFrame) -> str:
    """Per program, its messages of the date by what the contact ledger decided (stacked)."""
    plt = _plt()
    label = df["program"] + " (" + df["program_type"] + ")"  # a trigger and a journey may share a name
    per = df.groupby(label)[["scheduled", "capped", "suppressed", "no_consent"]].sum()
    per = per.loc[per.sum(axis=1).sort_values().index]
    fig, ax = plt.subplots(figsize=(6.4, 0.3 * len(per) + 1.2))
    left = pd.Series(0, index=per.index)
    colors = {"scheduled": BLUE, "capped": "#e8a33d", "suppressed": "#c8553d", "no_consent": "#9aa5b1"}
    for status, color in colors.items():
        ax.barh(per.index, per[status], left=left, color=color, label=status.replace("_", " "))
        left = left + per[status]
    ax.tick_params(axis="y", labelsize=8)
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    ax.set_title("Messages per program: sent, capped, suppressed, no consent", loc="left", fontsize=10)
    return _svg(fig)


def journey_steps(df: pd.DataFrame) -> str:
    """Each journey's steps of the night: customers who reached them and the messages sent (a funnel
    per journey, steps in their order)."""
    plt = _plt()
    df = df[df["passed"] > 0] if (df["passed"] > 0).any() else df
    labels = (df["journey"] + " · " + df["step"]).tolist()[::-1]
    fig, ax = plt.subplots(figsize=(6.4, 0.26 * len(df) + 1.1))
    ax.barh(labels, df["passed"].tolist()[::-1], color="#cbd2d9", label="reached")
    ax.barh(labels, df["sent"].tolist()[::-1], color=BLUE, label="sent")
    ax.tick_params(axis="y", labelsize=8)
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    ax.set_title("Tonight per journey step: reached and sent", loc="left", fontsize=10)
    return _svg(fig)
