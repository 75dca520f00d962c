"""Text renderers of a :class:`~leaderboard.aggregate.Leaderboard`: Markdown, CSV, LaTeX (booktabs); the HTML page
is :mod:`leaderboard.html`, and :func:`leaderboard.report.render` picks one by name:

    render(board, "md" | "csv" | "csv-long" | "latex" | "html", output=None, detail=False, columns=None,
           **options) -> str

The text formats are *compact* by default: one column per task (its headline metric, see
:meth:`~leaderboard.aggregate.Leaderboard.headline_columns`), grouped by role, plus the edit
time. ``detail=True`` gives every score column and, in Markdown and LaTeX, the cost figures in a
table of their own (CSV keeps them as columns of its one table); ``columns="efficacy,general/mini_fd"``
picks columns by role, task, metric, ``task/metric`` or the name a header prints. ``csv-long`` is the tidy
form: one row per (method, target, task, metric). The HTML page always holds everything.

Every cell shows the figure, its 95 % interval and (when the column's sample counts differ) its
n, with the value relative to the ``none`` row beside it: ``Δ`` for a difference, ``%`` for a
ratio (see :mod:`leaderboard.aggregate`). When every figure of a column has the same n, the n
is printed once, in the column header. ``output`` also writes the text to that file.
"""

from __future__ import annotations

import io
import math
import re

import pandas as pd

from leaderboard.aggregate import EDIT_TIME, FIELDS, ROLES, Leaderboard

FORMATS = ("md", "csv", "csv-long", "latex", "html")


def fmt_number(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    a = abs(x)
    if a != 0 and (a >= 1e5 or a < 1e-3):
        return f"{x:.2e}"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    return f"{x:.3f}"


def fmt_relative(rec: dict) -> str:
    rel = rec.get("rel")
    if rel is None or (isinstance(rel, float) and math.isnan(rel)):
        return ""
    if rec["rel_kind"] == "ratio":
        return f"{100 * rel:.0f}%"
    return f"Δ{'+' if rel >= 0 else '−'}{fmt_number(abs(rel))}"


def fmt_n(n: float) -> str:
    return "–" if n is None or (isinstance(n, float) and math.isnan(n)) else str(int(n))


def column_label(col: tuple[str, str, str]) -> str:
    role, task, metric = col
    if col == EDIT_TIME:
        return "edit time (s)"
    return f"{task}/{metric}"


Column = tuple[str, str, str]


def select_columns(board: Leaderboard, detail: bool = False, columns: str | list[str] | None = None) -> list[Column]:
    """The score columns a text table shows: the compact set, every score column (``detail``), or
    those named in ``columns`` (comma-separated or a list; each a role, a task, a metric or ``task/metric``,
    or a column's name as a table header prints it: ``efficacy: target/erasure_rate ↑ (n=6)``, ``edit time (s)``,
    with or without the role, the arrow and the n, in any letter case).

    Raises ValueError naming a selector that matches no column, with the valid names.
    """
    if columns:
        wanted = [w.strip() for w in (columns.split(",") if isinstance(columns, str) else columns) if w.strip()]
        every = board.columns()
        out: list[Column] = []
        for w in wanted:
            key = _header_key(w)
            hits = [c for c in every if w in (c[0], c[1], c[2], f"{c[1]}/{c[2]}")]
            hits = hits or [c for c in every if key in _header_keys(c)]
            if not hits:
                valid = sorted({c[0] for c in every} | {f"{c[1]}/{c[2]}" for c in every})
                raise ValueError(f"--columns: {w!r} names no column; valid: {', '.join(valid)}")
            out += [c for c in hits if c not in out]
        rank = {c: i for i, c in enumerate(every)}
        return sorted(out, key=rank.__getitem__)
    return board.score_columns() if detail else board.headline_columns()


_HEADER_N = re.compile(r"\(\s*n\s*=\s*\d+\s*\)")


def _header_key(text: str) -> str:
    """A header as typed by a user, normalised: no direction arrow, no ``(n=...)``, single spaces, lower case."""
    text = _HEADER_N.sub(" ", text.replace("↑", " ").replace("↓", " "))
    return " ".join(text.replace(" :", ":").split()).lower()


def _header_keys(col: Column) -> set[str]:
    """The normalised names a column's headers print: with and without the role prefix (Markdown prints
    ``role: label``; HTML and LaTeX the label under a role group), the edit time also without its unit."""
    label = column_label(col)
    names = {label, f"{col[0]}: {label}"}
    if col == EDIT_TIME:
        names |= {"edit time", f"{col[0]}: edit time"}
    return {_header_key(n) for n in names}


def column_n(board: Leaderboard, col: tuple[str, str, str]) -> int | None:
    """The common n of a column's figures, or None when they differ."""
    f = board.figures
    ns = f[(f["role"] == col[0]) & (f["task"] == col[1]) & (f["metric"] == col[2])]["n"].dropna().unique()
    return int(ns[0]) if len(ns) == 1 else None


def cells(board: Leaderboard, cols: list[Column] | None = None) -> tuple[list[Column], list[tuple[str, str]], dict]:
    """(columns, rows, {(row, col): figure dict}); ``cols`` default: every column of the board."""
    cols, rows = (board.columns() if cols is None else cols), board.rows()
    lookup = {}
    for rec in board.figures.to_dict("records"):
        lookup[((rec["method"], rec["target"]), (rec["role"], rec["task"], rec["metric"]))] = rec
    return cols, rows, lookup


def cell_text(rec: dict | None, show_n: bool, ci_sep: str = ", ") -> str:
    if rec is None:
        return "–"
    text = fmt_number(rec["value"])
    if not (rec["ci_low"] == rec["value"] == rec["ci_high"]) and not math.isnan(rec["ci_low"]):
        text += f" [{fmt_number(rec['ci_low'])}{ci_sep}{fmt_number(rec['ci_high'])}]"
    if show_n:
        text += f" n={fmt_n(rec['n'])}"
    rel = fmt_relative(rec)
    return f"{text} ({rel})" if rel else text


def direction_mark(board: Leaderboard, col: tuple[str, str, str]) -> str:
    """↑ or ↓ where the metric has a direction, else "" (cost counters, unregistered metrics)."""
    f = board.figures
    hib = f[(f["role"] == col[0]) & (f["metric"] == col[2])]["higher_is_better"].iloc[0]
    if hib is None or (isinstance(hib, float) and math.isnan(hib)):
        return ""
    return "↑" if bool(hib) else "↓"


def legend(board: Leaderboard, compact: bool = False) -> list[str]:
    lines = ["Cells: value [95 % bootstrap interval] (relative to the `none` row of the same target: "
             "Δ = difference, % = ratio). ↑/↓: higher/lower is better. n: images (or edits for cost)."]
    if compact:
        lines.append("One column per task (its headline metric); `erasebench report --detail` shows every "
                     "metric and the cost figures.")
    return lines + [f"Note: {n}" for n in board.notes]


# --------------------------------------------------------------------------- Markdown
def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


_MD_LABEL_SPECIAL = set("\\`*_<>|~$&")
_MD_LINK = re.compile(r"\]\s*[(\[:]")  # "](", "][", "]:" : brackets that would make a link or a reference


def md_label(text: str) -> str:
    """A method or target label as literal Markdown text: the characters Markdown (and GitHub's math and HTML)
    would interpret are backslash-escaped, so a label renders as written and cannot open a table cell.

    Brackets are escaped only where they could form a link (``[x](url)``, ``[x][ref]``, ``[x]: url``): a
    bracket pair alone is literal text in Markdown (a table cell cannot define the reference it would need),
    so the ``method [run]`` rows of a board read as written in a terminal too, not as ``\\[run\\]``."""
    text = str(text)
    special = _MD_LABEL_SPECIAL | (set("[]") if _MD_LINK.search(text) else set())
    return "".join("\\" + ch if ch in special else ch for ch in text)


def _markdown_table(board: Leaderboard, cols: list[Column], role_prefix: bool = True) -> list[str]:
    cols, rows, lookup = cells(board, cols)
    rows = [r for r in rows if any((r, c) in lookup for c in cols)]
    ns = {c: column_n(board, c) for c in cols}
    header = ["method", "target"]
    for c in cols:
        n = f" (n={ns[c]})" if ns[c] is not None else ""
        head = f"{c[0]}: {column_label(c)}" if role_prefix else column_label(c)
        header.append(f"{head} {direction_mark(board, c)}{n}".replace("  ", " "))
    out = ["| " + " | ".join(_md_escape(h) for h in header) + " |",
           "|" + "---|" * 2 + "---:|" * len(cols)]
    for r in rows:
        line = [md_label(r[0]), md_label(r[1])]
        line += [_md_escape(cell_text(lookup.get((r, c)), show_n=ns[c] is None)) for c in cols]
        out.append("| " + " | ".join(line) + " |")
    return out


def render_markdown(board: Leaderboard, detail: bool = False, columns: str | list[str] | None = None) -> str:
    """The compact leaderboard (default), every score column (``detail``) or the ``columns`` chosen;
    with ``detail`` the cost figures follow in a table of their own."""
    cols = select_columns(board, detail, columns)
    out = _markdown_table(board, cols)
    cost = board.cost_columns()
    if detail and not columns and cost:
        out += ["", "Cost of each edit (time, memory and the method's own counters; n: edits):", ""]
        out += _markdown_table(board, cost, role_prefix=False)
    out.append("")
    out.extend(legend(board, compact=not detail and not columns))
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- CSV
def render_csv(board: Leaderboard, detail: bool = False, columns: str | list[str] | None = None) -> str:
    """One row per (method, target); per column ``role/task/metric.<field>`` for the raw figure and the relative one.

    Compact by default (the headline columns and the edit time); ``detail``: every column, the cost
    figures included (a CSV holds one table).
    """
    table = board.table()
    keep = set(board.columns() if detail and not columns else select_columns(board, detail, columns))
    flat = pd.DataFrame(index=table.index)
    for role, task, metric, fld in table.columns:
        if (role, task, metric) not in keep:
            continue
        name = f"{role}/{task}/{metric}"
        if role == "cost" and fld.startswith("rel"):
            continue  # cost has no reference row
        if fld.startswith("rel"):
            kind = board.rel_kind(metric)
            suffix = {"rel": f"{kind}_vs_none", "rel_low": f"{kind}_vs_none_low", "rel_high": f"{kind}_vs_none_high"}[fld]
        else:
            suffix = fld
        flat[f"{name}.{suffix}"] = table[(role, task, metric, fld)]
    buf = io.StringIO()
    flat.reset_index().to_csv(buf, index=False, float_format="%.6g", lineterminator="\n")
    return buf.getvalue()


LONG_COLUMNS = ("method", "target", "role", "task", "metric", "value", "ci_low", "ci_high", "n", "higher_is_better",
                "rel_kind", "rel", "rel_low", "rel_high", "run")


def render_csv_long(board: Leaderboard, detail: bool = False, columns: str | list[str] | None = None) -> str:
    """Long ("tidy") CSV: one row per (method, target, task, metric) with ``value, ci_low, ci_high, n``, the
    role, the metric's direction (``higher_is_better``: True, False or empty), the value relative to the ``none``
    row (``rel_kind``: delta or ratio; ``rel, rel_low, rel_high``) and the run it comes from.

    Every figure by default (cost included: a long table is for analysis, not for reading); ``columns``
    keeps the columns chosen (see :func:`select_columns`). Rows in table order (targets, ``none`` first),
    columns by role, task and metric as the wide table orders them.
    """
    keep = select_columns(board, detail, columns) if columns else board.columns()
    rank = {c: i for i, c in enumerate(keep)}
    rows = {r: i for i, r in enumerate(board.rows())}
    f = board.figures
    f = f[[(r, t, m) in rank for r, t, m in zip(f["role"], f["task"], f["metric"])]].copy()
    f["_row"] = [rows[(m, t)] for m, t in zip(f["method"], f["target"])]
    f["_col"] = [rank[(r, t, m)] for r, t, m in zip(f["role"], f["task"], f["metric"])]
    f = f.sort_values(["_row", "_col"], kind="stable")
    f["higher_is_better"] = [None if _missing(h) else bool(h) for h in f["higher_is_better"]]
    f["n"] = [None if _missing(n) else int(n) for n in f["n"]]
    for col in ("rel", "rel_low", "rel_high"):
        f.loc[f["role"] == "cost", col] = float("nan")  # cost has no reference row
    f.loc[f["role"] == "cost", "rel_kind"] = ""
    buf = io.StringIO()
    f[list(LONG_COLUMNS)].to_csv(buf, index=False, float_format="%.6g", lineterminator="\n")
    return buf.getvalue()


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


# --------------------------------------------------------------------------- LaTeX (booktabs)
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _latex_cell(rec: dict | None, show_n: bool) -> str:
    if rec is None:
        return "--"
    text = fmt_number(rec["value"]).replace("–", "--")
    if not (rec["ci_low"] == rec["value"] == rec["ci_high"]) and not math.isnan(rec["ci_low"]):
        text += r" {\scriptsize[" + fmt_number(rec["ci_low"]) + ", " + fmt_number(rec["ci_high"]) + "]}"
    if show_n:
        text += r" {\scriptsize $n{=}" + fmt_n(rec["n"]) + "$}"
    rel = fmt_relative(rec)
    if rel:
        if rel.startswith("Δ"):
            rel = r"$\Delta\,{" + ("-" if rel[1] == "−" else "+") + "}$" + rel[2:]
        text += r" {\scriptsize(" + rel.replace("%", r"\%") + ")}"
    return text


def render_latex(board: Leaderboard, detail: bool = False, columns: str | list[str] | None = None) -> str:
    """A booktabs tabular of the compact leaderboard (default) or of every score column (``detail``,
    then a second tabular of the cost figures) or of the ``columns`` chosen."""
    text = _latex_table(board, select_columns(board, detail, columns))
    cost = board.cost_columns()
    if detail and not columns and cost:
        text += "\n% cost of each edit (time, memory and the method's own counters; n: edits)\n"
        text += _latex_table(board, cost)
    return text


def _latex_table(board: Leaderboard, cols: list[Column]) -> str:
    cols, rows, lookup = cells(board, cols)
    rows = [r for r in rows if any((r, c) in lookup for c in cols)]
    ns = {c: column_n(board, c) for c in cols}
    lines = [r"% requires \usepackage{booktabs}", r"\begin{tabular}{ll" + "r" * len(cols) + "}", r"\toprule"]
    # role group header with \cmidrule under each group
    groups: list[tuple[str, int]] = []
    for c in cols:
        if groups and groups[-1][0] == c[0]:
            groups[-1] = (c[0], groups[-1][1] + 1)
        else:
            groups.append((c[0], 1))
    head, rules, start = [" ", " "], [], 3
    for role, span in groups:
        head.append(rf"\multicolumn{{{span}}}{{c}}{{{latex_escape(role)}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
        start += span
    lines.append(" & ".join(head) + r" \\")
    lines.append(" ".join(rules))
    sub = ["method", "target"]
    for c in cols:
        arrow = {"↑": r"$\uparrow$", "↓": r"$\downarrow$"}.get(direction_mark(board, c), "")
        n = rf" ($n{{=}}{ns[c]}$)" if ns[c] is not None else ""
        sub.append(latex_escape(column_label(c)) + (" " + arrow if arrow else "") + n)
    lines.append(" & ".join(sub) + r" \\")
    lines.append(r"\midrule")
    previous_target = None
    for r in rows:
        if previous_target is not None and r[1] != previous_target:
            lines.append(r"\midrule")
        previous_target = r[1]
        line = [latex_escape(r[0]), latex_escape(r[1])]
        line += [_latex_cell(lookup.get((r, c)), show_n=ns[c] is None) for c in cols]
        lines.append(" & ".join(line) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


__all__ = ["FIELDS", "FORMATS", "ROLES", "render_csv", "render_csv_long", "render_latex", "render_markdown",
           "select_columns"]
