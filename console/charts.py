"""Chart figures for the console, as plotly JSON (drawn in the browser by the bundled plotly.js; no CDN)."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

LAYOUT = {"margin": {"l": 50, "r": 20, "t": 30, "b": 50}, "height": 320, "autosize": True,
          "font": {"family": "system-ui, sans-serif", "size": 12}}


def _json(figure: go.Figure, **layout: Any) -> str:
    figure.update_layout(**(LAYOUT | layout))
    return figure.to_json()


def exclusions(excluded: dict[str, int], title: str) -> str:
    """Bars: how many audience members each reason excluded."""
    reasons = [r for r, n in excluded.items() if n]
    return _json(go.Figure(go.Bar(x=reasons, y=[excluded[r] for r in reasons], marker_color="#c0504d"),
                           layout={"title": {"text": title}}))


def uplift(rows: list[dict[str, Any]], title: str) -> str:
    """Each campaign's uplift with its 95% interval as error bars."""
    measured = [r for r in rows if r["uplift"]["conversion"]["difference"] is not None]
    conversion = [r["uplift"]["conversion"] for r in measured]
    return _json(go.Figure(go.Bar(
        x=[r["campaign"] for r in measured], y=[100 * c["difference"] for c in conversion],
        error_y={"type": "data", "symmetric": False, "array": [100 * (c["high"] - c["difference"]) for c in conversion],
                 "arrayminus": [100 * (c["difference"] - c["low"]) for c in conversion]},
        marker_color=["#4f81bd" if c["significant"] else "#a6a6a6" for c in conversion]),
        layout={"title": {"text": title}, "yaxis": {"ticksuffix": " pt"}}))


def tiers_over_time(runs: list[dict[str, Any]], title: str) -> str:
    """Stacked bars: customers per tier at each segmentation run (one bar per run day, readable from the first)."""
    names = sorted({tier for run in runs for tier in run["tier"]})
    days = [run["as_of"].strftime("%Y-%m-%d %H:%M") for run in runs]
    figure = go.Figure(layout={"title": {"text": title}, "barmode": "stack", "xaxis": {"type": "category"}})
    for name in names:
        figure.add_trace(go.Bar(x=days, y=[r["tier"].get(name, 0) for r in runs], name=name))
    return _json(figure)


def retention(cohorts: list[dict[str, Any]], title: str) -> str:
    """Grouped bars: 30- and 90-day retention per first-order month (open windows left out)."""
    figure = go.Figure(layout={"title": {"text": title}, "yaxis": {"tickformat": ".0%"}, "barmode": "group"})
    for days in (30, 90):
        key = f"retention_{days}d"
        figure.add_trace(go.Bar(x=[c["cohort"] for c in cohorts], y=[c[key] for c in cohorts], name=f"{days} d"))
    return _json(figure)


def model_against_baselines(metrics: dict[str, Any], title: str) -> str:
    """Grouped bars: ROC AUC and PR AUC of the model and of each baseline."""
    names = ["model", *metrics.get("baselines", {})]
    values = [metrics, *metrics.get("baselines", {}).values()]
    figure = go.Figure(layout={"title": {"text": title}, "barmode": "group", "yaxis": {"range": [0, 1]}})
    for metric in ("roc_auc", "pr_auc"):
        figure.add_trace(go.Bar(x=names, y=[v.get(metric) for v in values], name=metric))
    return _json(figure)


def calibration(bins: list[dict[str, Any]], predicted: str, observed: str, title: str) -> str:
    """Observed against predicted churn per bin, with the diagonal of perfect calibration."""
    figure = go.Figure(layout={"title": {"text": title}, "xaxis": {"title": {"text": predicted}, "range": [0, 1]},
                               "yaxis": {"title": {"text": observed}, "range": [0, 1]}})
    figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "#999"},
                                showlegend=False))
    figure.add_trace(go.Scatter(x=[b["mean_predicted"] for b in bins], y=[b["observed"] for b in bins],
                                mode="lines+markers", name=observed))
    return _json(figure)


def trend(points: list[dict[str, Any]], title: str) -> str:
    """A customer's churn probability over the kept scoring days."""
    # Scoring days as categories: one point or eight, the axis shows days, not fractions of a second.
    return _json(go.Figure(go.Scatter(x=[p["at"] for p in points], y=[p["p"] for p in points], mode="lines+markers"),
                           layout={"title": {"text": title}, "yaxis": {"range": [0, 1]},
                                   "xaxis": {"type": "category"}}), height=220)
