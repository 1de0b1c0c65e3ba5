"""Readable forms of assumption-check reports (lists of dicts from ``assumptions.check_components``):
a plain-text table for the terminal, a Markdown table for TensorBoard, one-line warnings."""

from __future__ import annotations

import math

FIXED = ("assumption", "component", "holds", "message")


def _number(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.3g}"
    return str(value)


def key_numbers(check: dict, limit: int = 4) -> str:
    """'name=value, ...' for the numeric fields of a check (short lists of numbers included)."""
    parts = []
    for key, value in check.items():
        if key in FIXED or value is None:
            continue
        if isinstance(value, (int, float)):
            parts.append(f"{key}={_number(value)}")
        elif isinstance(value, (list, tuple)) and 0 < len(value) <= 6 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            parts.append(f"{key}=[{', '.join(_number(v) for v in value)}]")
        if len(parts) == limit:
            break
    return ", ".join(parts)


def _rows(checks: list[dict]) -> list[tuple[str, str, str, str, str]]:
    return [(str(c.get("assumption", "")), str(c.get("component", "")), "yes" if c.get("holds") else "NO",
             key_numbers(c), str(c.get("message", ""))) for c in checks]


HEADER = ("assumption", "component", "holds", "numbers", "message")


def text_table(checks: list[dict]) -> str:
    """A fixed-width table, one line per check."""
    rows = [HEADER, *_rows(checks)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER) - 1)]
    return "\n".join("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[-1]]).rstrip() for row in rows)


def markdown_table(checks: list[dict]) -> str:
    """A Markdown table (TensorBoard's TEXT tab renders it)."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    for row in _rows(checks):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines)


def violations(checks: list[dict]) -> list[dict]:
    return [c for c in checks if not c.get("holds")]


def warning_line(check: dict) -> str:
    """'assumption 2 (activation 'relu'): <message>' on one line."""
    message = " ".join(str(check.get("message", "")).split())
    return f"assumption {check.get('assumption')} ({check.get('component')}): {message}"
