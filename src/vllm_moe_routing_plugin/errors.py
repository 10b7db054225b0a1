# SPDX-License-Identifier: Apache-2.0
"""How the plugin names an error in a log line or a report."""

from __future__ import annotations


def describe_error(error: BaseException) -> str:
    """``RuntimeError: message`` (or the type alone when it has no message, or
    when its message cannot be made: it is called where nothing may raise)."""
    try:
        text = str(error)
    except Exception:
        text = ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
