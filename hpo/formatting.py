"""How the study's numbers are written: in the summary, the diagnostics, the plots' titles and MLflow.

One home for these small helpers, so that the same number is written the same way everywhere.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def signed(value: float, decimals: int = 2, keep_sign: bool = False) -> str:
    """ "+1.23" / "−0.50": the value with its sign, and a typographic minus. A value that rounds to zero
    is "+0.00" (rounded first, so -0.001 is no "−0.00"), unless `keep_sign`: then a small negative value
    keeps its minus ("−0.0"), as the seed plot's title shows a negative effect."""
    if not keep_sign:
        value = round(value, decimals) + 0.0
    return f"{value:+.{decimals}f}".replace("-", "−")


def compact(value: Any) -> str:
    """A setting's value in a few characters: floats to 4 significant digits, anything else as str()."""
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


def format_p(p: float) -> str:
    """A p-value to 2 significant digits: "0.027", "n/a" for nan, "<1e-300" where it underflowed to zero."""
    if math.isnan(p):
        return "n/a"
    if p == 0:  # below the smallest double: say so rather than print an impossible p=0
        return "<1e-300"
    return f"{p:.2g}"


def p_equals(p: float) -> str:
    """ "p=0.027", or "p<1e-300" where the p-value underflowed to zero."""
    text = format_p(p)
    return f"p{text}" if text.startswith("<") else f"p={text}"


def points(fraction: float) -> float:
    """An accuracy in points, rounded to 1e-4 (float32 noise such as 31.600004 would show in MLflow's UI)."""
    return round(100 * fraction, 4)
