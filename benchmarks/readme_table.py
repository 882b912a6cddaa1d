"""The one way the benchmark scripts put a generated table into README.md: between two marker comments."""

from __future__ import annotations


def between(readme: str, start: str, end: str, table: str) -> str:
    """`readme` with the text between the markers `start` and `end` replaced by `table`."""
    if start not in readme or end not in readme:
        raise SystemExit(f"README.md lacks the markers {start!r} ... {end!r}: put them where the table goes")
    head, rest = readme.split(start, 1)
    return f"{head}{start}\n{table}\n{end}{rest.split(end, 1)[1]}"
