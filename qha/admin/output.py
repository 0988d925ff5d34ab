"""
What C{qha-admin} prints: plain-text tables, and L{AdminError}, the one
line on standard error of a command that failed. Shared by the command
modules (L{qha.admin.cli}, L{qha.admin.manage}).
"""

from __future__ import annotations

from typing import Any, Sequence


class AdminError(Exception):
    """
    A command failed: the message is the one line for standard error.
    """


def cell(value: Any) -> str:
    """
    A value as a table shows it: booleans as yes/no, nothing as C{-}.
    """
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None or value == "":
        return "-"
    return str(value)


def formatTable(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """
    A plain-text table: a header line, a rule, then one line per row;
    numbers are aligned right, everything else left.

    @return: the lines, each ending in a newline.
    """
    cells = [list(headers)] + [[cell(value) for value in row] for row in rows]
    numeric = [
        bool(rows) and all(isinstance(row[i], int) and not isinstance(row[i], bool) for row in rows)
        for i in range(len(headers))
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        """
        One line of the table, padded and aligned.
        """
        parts = [
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric)
        ]
        return "  ".join(parts).rstrip() + "\n"

    text = line(cells[0]) + line(["-" * width for width in widths])
    for values in cells[1:]:
        text += line(values)
    return text


__all__ = ["AdminError", "cell", "formatTable"]
