"""Markdown cells and tables of the report: numbers, FLOP counts, relative changes, intervals."""

from __future__ import annotations

import math


def fmt(x, digits: int = 1, suffix: str = "") -> str:
    """A number for a markdown cell: ``-`` when missing."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, int) or (isinstance(x, float) and digits == 0):
        return f"{x:,.0f}{suffix}"
    return f"{x:,.{digits}f}{suffix}"


def fmt_flops(pflops) -> str:
    """A FLOP count given in PFLOPs, with an SI prefix (``40.8 T``)."""
    if pflops is None or not math.isfinite(float(pflops)):
        return "-"
    value = float(pflops) * 1e15
    for prefix, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9)):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}"
    return f"{value:.3g}"


def fmt_rel(x) -> str:
    """A relative change as a signed percentage."""
    if x is None or not math.isfinite(float(x)):
        return "-"
    return f"{100 * float(x):+.1f}%"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def fmt_interval(low, high, digits: int = 1, signed: bool = False) -> str:
    """``[low, high]`` of a confidence interval; empty when there is none (one seed)."""
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return ""
    sign = "+" if signed else ""
    low, high = round(low, digits) + 0.0, round(high, digits) + 0.0  # no "-0.0"
    return f"[{low:{sign},.{digits}f}, {high:{sign},.{digits}f}]"
