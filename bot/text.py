"""Small text helpers that the host, the frontends and the commands share."""

from __future__ import annotations


def ordinal(n: int) -> str:
    """1 -> 1st, 2 -> 2nd, 11 -> 11th, 23 -> 23rd."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def human_bytes(n: int) -> str:
    """Decimal units, like the parameter counts: 16_060_522_752 -> '16.06 GB'."""
    for div, suffix, digits in ((10**12, "TB", 2), (10**9, "GB", 2), (10**6, "MB", 1), (10**3, "KB", 1)):
        if n >= div:
            return f"{n / div:.{digits}f} {suffix}"
    return f"{n} B"


def text_table(rows: list[tuple[str, ...]]) -> str:
    """Rows as left-aligned columns two spaces apart (for a code block): /models, /settings."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
