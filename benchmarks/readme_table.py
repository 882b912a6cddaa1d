"""The one way the benchmark scripts put a generated table into a page (README.md or one under docs/): between two
marker comments."""

from __future__ import annotations


def between(page: str, start: str, end: str, table: str) -> str:
    """`page` with the text between the markers `start` and `end` replaced by `table`."""
    if start not in page or end not in page:
        raise SystemExit(f"the page lacks the markers {start!r} ... {end!r}: put them where the table goes")
    head, rest = page.split(start, 1)
    return f"{head}{start}\n{table}\n{end}{rest.split(end, 1)[1]}"
