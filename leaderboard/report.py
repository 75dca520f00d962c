"""``render(board, fmt)``: a leaderboard in one of the formats (:data:`FORMATS`), written to a file when asked.

The text formats are :mod:`leaderboard.render`'s, the HTML page :mod:`leaderboard.html`'s (which uses
:mod:`leaderboard.render`'s cell formatting; so the choice between them lives here, above both).
"""

from __future__ import annotations

from pathlib import Path

from leaderboard.aggregate import Leaderboard
from leaderboard.render import FORMATS, render_csv, render_csv_long, render_latex, render_markdown


def render(board: Leaderboard, fmt: str = "md", output: str | Path | None = None, detail: bool = False,
           columns: str | list[str] | None = None, **options) -> str:
    """Render ``board`` as ``fmt`` (md, csv, csv-long, latex, html); write it to ``output`` too when given.

    Text formats: compact by default, ``detail`` for every column (and the cost table), ``columns``
    to choose (see :func:`select_columns`). HTML (always the full table) options: ``show_unsafe``
    (default False: images flagged unsafe are blurred), ``max_images`` (per method and task in the
    image grids), ``title``.
    """
    if options and fmt != "html":
        raise TypeError(f"format {fmt!r} takes no options (got {', '.join(options)})")
    if fmt == "md":
        text = render_markdown(board, detail, columns)
    elif fmt == "csv":
        text = render_csv(board, detail, columns)
    elif fmt == "csv-long":
        text = render_csv_long(board, detail, columns)
    elif fmt == "latex":
        text = render_latex(board, detail, columns)
    elif fmt == "html":
        from leaderboard.html import render_html

        text = render_html(board, **options)
    else:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    if output is not None:
        from bench.store import atomic_write_bytes

        atomic_write_bytes(Path(output), text.encode())
    return text


__all__ = ["FORMATS", "render"]
