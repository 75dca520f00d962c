"""A static, self-contained HTML page for a leaderboard.

- a sortable table (click a header; ``page.html#sort=<column index>-<asc|desc>`` opens it sorted) of the
  compact columns (one per task, its headline metric, and the edit time: ``Leaderboard.headline_columns``),
  and every column in a second sortable table behind a ``<details>`` toggle. Both sit in a box that scrolls
  sideways on its own, with the method and target columns pinned (CSS ``position: sticky``), and headers
  wrap, so the page stays as wide as the window (usable at 1,400 px). A value relative to ``none`` is
  coloured by its metric's direction: green when better, red when worse, grey when equal or without a
  direction (class ``rel better|worse|neutral``; see :func:`rel_direction`),
- an efficacy-vs-specificity plot per target with its Pareto front (matplotlib PNG, embedded); point labels
  are placed so that they overlap neither each other nor the legend, which sits below the axes
  (:func:`place_labels`),
- per-method image grids: for each target and task, one row per method over the same prompts
  and seeds (taken from the ``none`` row when there is one), so rows compare image for image,
- attribution plots found as PNGs under a run's ``attribution/`` folder (CAD runs).

Images flagged unsafe (see :func:`leaderboard.aggregate.unsafe_flags`) are blurred *before* they
are embedded (a CSS blur could be undone and would still ship the image), unless
``show_unsafe=True``. Every image is embedded as base64 (thumbnails of at most ``THUMB`` pixels),
so the page is one file to publish. On load, a script counts the images that failed to decode,
marks them, and shows a warning; ``body[data-images-ok]`` / ``body[data-images-broken]`` hold the
counts.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from leaderboard.aggregate import REFERENCE_METHOD, ROLES, Leaderboard, pareto_front, unsafe_flags
from leaderboard.render import cells, column_label, column_n, direction_mark, fmt_n, fmt_number, fmt_relative

THUMB = 128  # longest side of an embedded sample image
ATTRIBUTION_MAX = 900  # longest side of an embedded attribution plot
ROLE_COLOURS = {"efficacy": "#fde2e1", "specificity": "#e1effd", "utility": "#e5f6e1", "robustness": "#f4e6fb",
                "cost": "#eeeeee"}

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1rem 1.25rem; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.15rem; margin-top: 2rem; } h3 { font-size: 1rem; }
.table-wrap { overflow-x: auto; max-width: 100%; margin-bottom: 0.5rem; }
table.leaderboard { border-collapse: separate; border-spacing: 0; font-size: 0.85rem;
  border-top: 1px solid #ccc; border-left: 1px solid #ccc; }
table.leaderboard th, table.leaderboard td { border-right: 1px solid #ccc; border-bottom: 1px solid #ccc;
  padding: 0.25rem 0.35rem; background: #fff; }
table.leaderboard th { white-space: normal; overflow-wrap: break-word; vertical-align: bottom; min-width: 4rem;
  max-width: 10rem; }
table.leaderboard th.role { vertical-align: middle; }
table.leaderboard td { white-space: nowrap; }
table.leaderboard td.label { white-space: normal; overflow-wrap: break-word; max-width: 12rem; }
table.leaderboard td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: normal; }
table.leaderboard td.num > span { white-space: nowrap; }
table.leaderboard .sticky { position: sticky; z-index: 1; }
table.leaderboard thead .sticky { z-index: 2; }
table.leaderboard .c0 { left: 0; }
table.leaderboard .c1 { left: var(--c1-left, 6rem); box-shadow: 2px 0 0 #bbb; }
details.detail-table > summary { cursor: pointer; margin: 0.5rem 0; color: #245; }
table.leaderboard th[data-col] { cursor: pointer; user-select: none; }
table.leaderboard th[data-col]:after { content: " \\21C5"; color: #999; }
table.leaderboard th[aria-sort=ascending]:after { content: " \\25B2"; color: #333; }
table.leaderboard th[aria-sort=descending]:after { content: " \\25BC"; color: #333; }
table.leaderboard tr.reference td { font-style: italic; background: #fafafa; }
.ci, .n { color: #666; font-size: 0.72rem; } .rel { font-size: 0.72rem; margin-left: 0.3rem; }
.rel.better { color: #0a7a3c; } .rel.worse { color: #c0392b; } .rel.neutral { color: #777; }
.notes { color: #864; } .warning { background: #fee; border: 1px solid #c66; padding: 0.5rem; }
table.grid { border-collapse: collapse; margin-bottom: 1rem; }
table.grid th { text-align: left; padding-right: 0.6rem; font-weight: normal; white-space: nowrap; }
table.grid td { padding: 2px; vertical-align: top; }
table.grid img.sample { width: 64px; height: 64px; image-rendering: pixelated; display: block; }
table.grid td.missing { width: 64px; height: 64px; background: repeating-linear-gradient(45deg,#eee,#eee 4px,#fff 4px,#fff 8px); }
img.sample.blurred { outline: 2px solid #c33; }
img.broken { outline: 3px dashed red; }
figure { display: inline-block; margin: 0.5rem; } figcaption { font-size: 0.75rem; color: #555; }
img.plot { max-width: 100%; }
"""

JS = r"""
function cellKey(td) {
  var v = td.getAttribute('data-sort');
  if (v === null || v === '') return null;
  var x = parseFloat(v);
  return isNaN(x) ? v.toLowerCase() : x;
}
function sortTable(table, col, dir) {
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  rows.sort(function (a, b) {
    var x = cellKey(a.cells[col]), y = cellKey(b.cells[col]);
    if (x === null && y === null) return 0;
    if (x === null) return 1;            // empty cells last, whatever the direction
    if (y === null) return -1;
    var c = (x < y) ? -1 : (x > y) ? 1 : 0;
    return dir === 'asc' ? c : -c;
  });
  rows.forEach(function (r) { body.appendChild(r); });
  table.querySelectorAll('th[data-col]').forEach(function (th) {
    if (parseInt(th.getAttribute('data-col')) === col) th.setAttribute('aria-sort', dir === 'asc' ? 'ascending' : 'descending');
    else th.removeAttribute('aria-sort');
  });
  table.setAttribute('data-sorted', col + '-' + dir);
}
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th[data-col]').forEach(function (th) {
    th.addEventListener('click', function () {
      var col = parseInt(th.getAttribute('data-col'));
      var cur = th.getAttribute('aria-sort');
      var best = th.getAttribute('data-best') || 'desc';   // first click: best first
      var dir = cur ? (cur === 'ascending' ? 'desc' : 'asc') : best;
      sortTable(table, col, dir);
    });
  });
});
function pinColumns(table) {
  // the target column sticks right of the method column, whatever the labels' width
  var first = table.querySelector('thead th.c0');
  if (!first || !first.offsetWidth) return;
  table.style.setProperty('--c1-left', first.getBoundingClientRect().width + 'px');
}
function pinAll() { document.querySelectorAll('table.leaderboard').forEach(pinColumns); }
pinAll();
window.addEventListener('resize', pinAll);
document.querySelectorAll('details').forEach(function (d) { d.addEventListener('toggle', pinAll); });
function applyHash() {
  var m = /sort=(\d+)-(asc|desc)/.exec(location.hash);
  var table = document.getElementById('leaderboard');
  if (m && table) sortTable(table, parseInt(m[1]), m[2]);
}
applyHash();
window.addEventListener('hashchange', applyHash);
window.addEventListener('load', function () {
  var ok = 0, broken = 0;
  document.querySelectorAll('img').forEach(function (img) {
    if (img.complete && img.naturalWidth > 0) { ok++; img.setAttribute('data-ok', '1'); }
    else { broken++; img.setAttribute('data-ok', '0'); img.classList.add('broken'); }
  });
  document.body.setAttribute('data-images-ok', ok);
  document.body.setAttribute('data-images-broken', broken);
  if (broken) {
    var w = document.createElement('p'); w.className = 'warning'; w.id = 'broken-images';
    w.textContent = broken + ' image(s) failed to load.';
    document.body.insertBefore(w, document.body.firstChild);
  }
});
"""


def esc(x) -> str:
    return html.escape(str(x), quote=True)


# --------------------------------------------------------------------------- images
def png_data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def blur_image(img):
    """Blur beyond recognition: pixelate to 8 px across, then a wide Gaussian blur."""
    from PIL import ImageFilter

    w, h = img.size
    small = img.resize((max(1, round(8 * w / max(w, h))), max(1, round(8 * h / max(w, h)))), resample=3)
    out = small.resize((w, h), resample=2)
    return out.filter(ImageFilter.GaussianBlur(radius=max(2.0, max(w, h) / 10)))


def thumbnail_uri(path: Path, blur: bool, size: int = THUMB) -> str | None:
    """The image at ``path`` as an embeddable PNG (or JPEG above 64 px) data URI; None when unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            img = im.convert("RGB")
    except (OSError, UnidentifiedImageError):
        return None
    if max(img.size) > size:
        img.thumbnail((size, size))
    if blur:
        img = blur_image(img)
    buf = io.BytesIO()
    if max(img.size) > 64:
        img.save(buf, format="JPEG", quality=85)
        return png_data_uri(buf.getvalue(), "image/jpeg")
    img.save(buf, format="PNG")
    return png_data_uri(buf.getvalue())


def own_image(run_dir: Path, path: Path) -> bool:
    """Whether ``path`` is an image of the run ``run_dir`` that may be shown: inside it once links are resolved,
    whole, and carrying its own key (a swapped or foreign image is not shown; issue 37)."""
    from bench.store import inside, read_keyed_png

    return inside(run_dir, path) and read_keyed_png(path, root=run_dir, require_key=False)[1] is None


# --------------------------------------------------------------------------- plot
# Where a point's label may go, in points from the point (tried in order; farther rings after the near one).
LABEL_OFFSETS = [(dx * r, dy * r) for r in (1, 2, 3.5, 5) for dx, dy in
                 ((5, 4), (5, -11), (-5, 4), (-5, -11), (0, 9), (0, -16), (9, -4), (-9, -4))]


def place_labels(ax, points: list[tuple[float, float]], labels: list[str], avoid=()) -> list:
    """Annotate each point with its label where it overlaps no label placed before it, no marker and
    nothing in ``avoid`` (display-space boxes, e.g. the legend's), trying ``LABEL_OFFSETS`` in turn; a label
    that fits nowhere takes the offset with the least overlap and a leader line. Returns the annotations."""
    from matplotlib.transforms import Bbox

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    to_px = fig.dpi / 72.0
    marker = 5 * to_px  # half a marker's size, in pixels
    point_boxes = [Bbox.from_extents(x - marker, y - marker, x + marker, y + marker)
                   for x, y in ax.transData.transform(points)] if points else []
    placed: list = []
    annotations = []
    blocked = list(avoid)
    for i, ((x, y), label) in enumerate(zip(points, labels)):
        best = None
        for dx, dy in LABEL_OFFSETS:
            ann = ax.annotate(label, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=7,
                              ha="left" if dx > 0 else "right" if dx < 0 else "center", parse_math=False,
                              annotation_clip=False)
            box = ann.get_window_extent(renderer).expanded(1.05, 1.1)
            others = placed + blocked + [b for j, b in enumerate(point_boxes) if j != i]
            overlap = sum(_overlap_area(box, b) for b in others)
            if best is None or overlap < best[0]:
                if best is not None:
                    best[1].remove()
                best = (overlap, ann, box, (dx, dy))
            else:
                ann.remove()
            if overlap == 0:
                break
        _, ann, box, (dx, dy) = best
        if abs(dx) + abs(dy) > 20:  # moved away from its point: a thin line shows which point it names
            ann.remove()
            ann = ax.annotate(label, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=7,
                              ha="left" if dx > 0 else "right" if dx < 0 else "center", parse_math=False,
                              annotation_clip=False, arrowprops={"arrowstyle": "-", "color": "#999", "lw": 0.6})
        placed.append(box)
        annotations.append(ann)
    return annotations


def _overlap_area(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def tradeoff_figure(board: Leaderboard):
    """The matplotlib figure of :func:`tradeoff_plot_png` and, per axes, its label annotations; None without data.

    Efficacy (y) against specificity (x) per target, the Pareto front drawn as a step line; one legend below
    the axes (inside them it covered points), labels placed by :func:`place_labels`.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    scores = board.scores()
    scores = scores[scores["efficacy"].notna() & scores["specificity"].notna()]
    if scores.empty:
        return None
    targets = list(dict.fromkeys(scores["target"]))
    ncols = min(3, len(targets))
    nrows = math.ceil(len(targets) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.8 * nrows + 0.4), squeeze=False)
    relative = bool(scores["specificity_relative"].any())
    drawn = []
    for ax, target in zip(axes.flat, targets):
        s = scores[scores["target"] == target].reset_index(drop=True)
        front = pareto_front(s["specificity"], s["efficacy"])
        for i, row in s.iterrows():
            ref = row["method"] == REFERENCE_METHOD
            ax.errorbar(row["specificity"], row["efficacy"], xerr=_err(row, "specificity"),
                        yerr=_err(row, "efficacy"), fmt="s" if ref else "o",
                        color="#777" if ref else ("#c0392b" if front[i] else "#2c7fb8"), ecolor="#bbb",
                        elinewidth=1, capsize=2, markersize=6, zorder=3)
        fs = s[front].sort_values("specificity", ascending=False)
        if len(fs) > 0:
            ax.step(fs["specificity"], fs["efficacy"], where="post", color="#c0392b", lw=1.2, alpha=0.8, zorder=2)
        ax.set_title(f"target: {target}", fontsize=9, parse_math=False)
        ax.set_xlabel("specificity (relative to none)" if relative else "specificity", fontsize=8)
        ax.set_ylabel("efficacy (higher is better)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.margins(0.12)  # room for the labels of the outermost points
        drawn.append((ax, s))
    for ax in list(axes.flat)[len(targets):]:
        ax.axis("off")
    handles = [Line2D([], [], color="#c0392b", lw=1.2, label="Pareto front"),
               Line2D([], [], color="#c0392b", marker="o", lw=0, label="on the front"),
               Line2D([], [], color="#2c7fb8", marker="o", lw=0, label="dominated"),
               Line2D([], [], color="#777", marker="s", lw=0, label=REFERENCE_METHOD)]
    legend = fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.canvas.draw()
    labels = {}
    for ax, s in drawn:
        labels[ax] = place_labels(ax, list(zip(s["specificity"], s["efficacy"])), list(s["method"]),
                                  avoid=[legend.get_window_extent(fig.canvas.get_renderer())])
    return fig, labels


def tradeoff_plot_png(board: Leaderboard) -> bytes | None:
    """The efficacy-against-specificity plot (:func:`tradeoff_figure`) as PNG bytes; None without data."""
    import matplotlib.pyplot as plt

    made = tradeoff_figure(board)
    if made is None:
        return None
    fig, _ = made
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _err(row, role):
    lo, hi, v = row[f"{role}_low"], row[f"{role}_high"], row[role]
    if lo is None or hi is None or np.isnan(lo) or np.isnan(hi):
        return None
    return [[max(0.0, v - lo)], [max(0.0, hi - v)]]


# --------------------------------------------------------------------------- sections
def rel_direction(rec: dict) -> str:
    """``better``, ``worse`` or ``neutral``: whether the value relative to ``none`` is on the good side of its
    metric's direction (a delta above 0 or a ratio above 1 is better for a higher-is-better metric, worse for
    a lower-is-better one); ``neutral`` when equal to the reference or when the metric has no direction."""
    rel, hib = rec.get("rel"), rec.get("higher_is_better")
    if rel is None or hib is None or (isinstance(hib, float) and math.isnan(hib)) or math.isnan(rel):
        return "neutral"
    change = rel - 1.0 if rec.get("rel_kind") == "ratio" else rel
    if abs(change) <= 1e-12:
        return "neutral"
    return "better" if (change > 0) == bool(hib) else "worse"


def _header_label(c) -> str:
    """The column label with a line-break opportunity after each slash (long task/metric names wrap there)."""
    return "/<wbr>".join(esc(part) for part in column_label(c).split("/"))


def table_html(board: Leaderboard, cols: list | None = None, table_id: str = "leaderboard") -> str:
    """A sortable table of ``cols`` (default: every column) in a box that scrolls sideways, the method and
    target columns pinned."""
    cols, rows, lookup = cells(board, cols)
    rows = [r for r in rows if any((r, c) in lookup for c in cols)]
    ns = {c: column_n(board, c) for c in cols}
    out = ['<div class="table-wrap">', f'<table id="{esc(table_id)}" class="leaderboard sortable">', "<thead>", "<tr>",
           '<th rowspan="2" data-col="0" data-best="asc" class="sticky c0">method</th>',
           '<th rowspan="2" data-col="1" data-best="asc" class="sticky c1">target</th>']
    groups: list[list] = []
    for c in cols:
        if groups and groups[-1][0] == c[0]:
            groups[-1][1] += 1
        else:
            groups.append([c[0], 1])
    for role, span in groups:
        out.append(f'<th colspan="{span}" class="role" style="background:{ROLE_COLOURS.get(role, "#fff")}">'
                   f"{esc(role)}</th>")
    out.append("</tr><tr>")
    for i, c in enumerate(cols, start=2):
        mark = direction_mark(board, c)
        best = "asc" if mark == "↓" else "desc"
        n = f' <span class="n">n={ns[c]}</span>' if ns[c] is not None else ""
        out.append(f'<th data-col="{i}" data-best="{best}" data-role="{esc(c[0])}" '
                   f'style="background:{ROLE_COLOURS.get(c[0], "#fff")}" title="{esc(c[0])}: {esc(c[1])} / '
                   f'{esc(c[2])}">{_header_label(c)} {mark}{n}</th>')
    out += ["</tr>", "</thead>", "<tbody>"]
    for r in rows:
        cls = ' class="reference"' if r[0] == REFERENCE_METHOD else ""
        out.append(f"<tr{cls}>")
        out.append(f'<td data-sort="{esc(r[0])}" class="label sticky c0">{esc(r[0])}</td>'
                   f'<td data-sort="{esc(r[1])}" class="label sticky c1">{esc(r[1])}</td>')
        for c in cols:
            rec = lookup.get((r, c))
            if rec is None or rec["value"] is None or math.isnan(rec["value"]):
                out.append('<td class="num" data-sort="">–</td>')
                continue
            text = f'<span class="v">{esc(fmt_number(rec["value"]))}</span>'
            if not (rec["ci_low"] == rec["value"] == rec["ci_high"]) and not math.isnan(rec["ci_low"]):
                text += f' <span class="ci">[{esc(fmt_number(rec["ci_low"]))}, {esc(fmt_number(rec["ci_high"]))}]</span>'
            if ns[c] is None:
                text += f' <span class="n">n={esc(fmt_n(rec["n"]))}</span>'
            rel = fmt_relative(rec)
            if rel:
                direction = rel_direction(rec)
                text += (f' <span class="rel {direction}" title="relative to none: {direction}">{esc(rel)}</span>')
            sort_key = repr(float(rec["value"]))
            out.append(f'<td class="num" data-sort="{sort_key}">{text}</td>')
        out.append("</tr>")
    out += ["</tbody>", "</table>", "</div>"]
    return "\n".join(out)


def tables_html(board: Leaderboard) -> str:
    """The compact table (``#leaderboard``), then every column (``#leaderboard-detail``) behind a toggle when
    the board has more columns than the compact set."""
    compact, every = board.headline_columns(), board.columns()
    out = table_html(board, compact, "leaderboard")
    if len(every) > len(compact):
        out += (f'\n<details class="detail-table" id="detail"><summary>Every metric and cost figure '
                f"({len(every)} columns)</summary>\n{table_html(board, every, 'leaderboard-detail')}\n</details>")
    return out


def select_samples(task_records: pd.DataFrame, max_images: int) -> list[tuple]:
    """The (prompt_id, sample_index, seed) shown for one target and task: from the ``none`` row if present.

    First sample of as many prompts as fit, then further samples.
    """
    ref = task_records[task_records["method"] == REFERENCE_METHOD]
    if ref.empty:
        ref = task_records[task_records["method"] == task_records["method"].iloc[0]]
    keys = []
    for rec in ref.to_dict("records"):
        keys.append((str(rec.get("prompt_id")), _int(rec.get("sample_index")), _int(rec.get("seed"))))
    keys = list(dict.fromkeys(keys))
    keys.sort(key=lambda k: (k[1] if k[1] is not None else 0))  # stable: prompt order kept within a sample index
    return keys[:max_images]


def _int(v):
    try:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)
    except (TypeError, ValueError):
        return None


def grids_html(board: Leaderboard, show_unsafe: bool, max_images: int) -> tuple[str, dict]:
    records = board.records()
    stats = {"images": 0, "blurred": 0, "missing": 0}
    if records.empty or "image_path" not in records.columns:
        return '<p id="no-grids">No per-image records with image paths in these runs.</p>', stats
    manifests = {r.label: r.manifest for r in board.runs}
    records = records.copy()
    records["_unsafe"] = unsafe_flags(records, manifests).to_numpy()
    role_rank = {r: i for i, r in enumerate(ROLES)}
    out = []
    methods_order = [m for m, _ in board.rows()]
    for target in dict.fromkeys(records["target"]):
        rt = records[records["target"] == target]
        tasks = sorted(dict.fromkeys(zip(rt["role"], rt["task"])), key=lambda x: role_rank.get(x[0], 99))
        out.append(f'<h3>target: {esc(target)}</h3>')
        for role, task in tasks:
            tr = rt[(rt["task"] == task)]
            keys = select_samples(tr, max_images)
            methods = sorted(dict.fromkeys(tr["method"]),
                             key=lambda m: methods_order.index(m) if m in methods_order else len(methods_order))
            out.append(f'<table class="grid" data-target="{esc(target)}" data-task="{esc(task)}">')
            out.append(f'<caption style="text-align:left">{esc(role)}: {esc(task)}</caption>')
            by_key = {}
            for rec in tr.to_dict("records"):
                k = (rec["method"], str(rec.get("prompt_id")), _int(rec.get("sample_index")), _int(rec.get("seed")))
                by_key.setdefault(k, []).append(rec)  # the same image may come from several runs
            for method in methods:
                out.append(f'<tr data-method="{esc(method)}"><th>{esc(method)}</th>')
                for key in keys:
                    found = by_key.get((method, *key), [])
                    rec = next((r for r in found if (Path(r["run_dir"]) / str(r["image_path"])).exists()),
                               found[0] if found else None)
                    if rec is None:
                        out.append('<td class="missing" title="no image for this prompt and seed"></td>')
                        stats["missing"] += 1
                        continue
                    blur = bool(rec["_unsafe"]) and not show_unsafe
                    src = Path(rec["run_dir"]) / str(rec["image_path"])
                    uri = thumbnail_uri(src, blur=blur) if own_image(Path(rec["run_dir"]), src) else None
                    if uri is None:
                        out.append('<td class="missing" title="image file missing"></td>')
                        stats["missing"] += 1
                        continue
                    stats["images"] += 1
                    stats["blurred"] += blur
                    title = f"{rec.get('prompt', '')} (prompt {key[0]}, sample {key[1]}, seed {key[2]})"
                    flags = " ".join(f"{c}={rec[c]}" for c in ("target_present", "correct") if c in rec
                                     and rec[c] is not None and not (isinstance(rec[c], float) and math.isnan(rec[c])))
                    cls = "sample blurred" if blur else "sample"
                    out.append(f'<td><img class="{cls}" src="{uri}" alt="{esc(title)}" '
                               f'title="{esc(title + (" " + flags if flags else "") + (" [blurred: unsafe]" if blur else ""))}"></td>')
                out.append("</tr>")
            out.append("</table>")
    return "\n".join(out), stats


def attribution_html(board: Leaderboard) -> str:
    items = board.attribution_images()
    if not items:
        return ""
    out = ['<h2>Attribution</h2>', '<section id="attribution">']
    for run_label, path in items:
        uri = thumbnail_uri(path, blur=False, size=ATTRIBUTION_MAX)
        if uri is None:
            continue
        rel = path.relative_to(next(r.path for r in board.runs if r.label == run_label))
        out.append(f'<figure><img class="plot attribution" src="{uri}" alt="{esc(rel)}">'
                   f"<figcaption>{esc(run_label)}: {esc(rel)}</figcaption></figure>")
    out.append("</section>")
    return "\n".join(out)


def runs_html(board: Leaderboard) -> str:
    out = ['<table class="leaderboard" id="runs"><thead><tr><th>run</th><th>suite</th><th>model</th><th>created</th>'
           "</tr></thead><tbody>"]
    for r in board.runs:
        m = r.manifest
        model = (m.get("model") or {}).get("name", "") if isinstance(m.get("model"), dict) else m.get("model", "")
        out.append(f"<tr><td title=\"{esc(r.path)}\">{esc(r.label)}</td><td>{esc(m.get('suite', ''))}</td>"
                   f"<td>{esc(model)}</td><td>{esc(m.get('created', ''))}</td></tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def render_html(board: Leaderboard, show_unsafe: bool = False, max_images: int = 8,
                title: str = "erasebench leaderboard") -> str:
    plot = tradeoff_plot_png(board)
    grids, stats = grids_html(board, show_unsafe=show_unsafe, max_images=max_images)
    notes = "".join(f"<li>{esc(n)}</li>" for n in board.notes)
    plot_html = (f'<img id="tradeoff-plot" class="plot" src="{png_data_uri(plot)}" '
                 f'alt="efficacy against specificity, with the Pareto front">' if plot is not None else
                 '<p id="no-plot">No row has both efficacy and specificity figures.</p>')
    unsafe_note = ("Images flagged unsafe are shown unblurred (show_unsafe)." if show_unsafe else
                   f"{stats['blurred']} image(s) flagged unsafe are blurred (render with show_unsafe=True to show them).")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{CSS}</style>
</head>
<body data-images-embedded="{stats['images']}" data-images-blurred="{stats['blurred']}">
<h1>{esc(title)}</h1>
<h2>Leaderboard</h2>
<p>Cells: value <span class="ci">[95 % bootstrap interval]</span> <span class="n">n</span>
<span class="rel neutral">relative to the <code>none</code> row of the same target (Δ difference, % ratio)</span>:
<span class="rel better">better</span>, <span class="rel worse">worse</span>,
<span class="rel neutral">equal or no direction</span>. ↑/↓: higher/lower is better. Click a header to sort.
One column per task (its headline metric) and the edit time; every metric below the table.</p>
{tables_html(board)}
{f'<ul class="notes">{notes}</ul>' if notes else ''}
<h2>Efficacy against specificity</h2>
<section id="plot">{plot_html}</section>
<h2>Images</h2>
<p>{esc(unsafe_note)} Each row is one method over the same prompts and seeds.</p>
<section id="grids">
{grids}
</section>
{attribution_html(board)}
<h2>Runs</h2>
{runs_html(board)}
<script>{JS}</script>
</body></html>
"""
