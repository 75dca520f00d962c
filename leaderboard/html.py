"""A static, self-contained HTML page for a leaderboard.

- a sortable table (click a header; ``page.html#sort=<column index>-<asc|desc>`` opens it sorted),
- an efficacy-vs-specificity plot per target with its Pareto front (matplotlib PNG, embedded),
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
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.15rem; margin-top: 2rem; } h3 { font-size: 1rem; }
table.leaderboard { border-collapse: collapse; font-size: 0.85rem; }
table.leaderboard th, table.leaderboard td { border: 1px solid #ccc; padding: 0.25rem 0.45rem; white-space: nowrap; }
table.leaderboard td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.leaderboard th[data-col] { cursor: pointer; user-select: none; }
table.leaderboard th[data-col]:after { content: " \\21C5"; color: #999; }
table.leaderboard th[aria-sort=ascending]:after { content: " \\25B2"; color: #333; }
table.leaderboard th[aria-sort=descending]:after { content: " \\25BC"; color: #333; }
table.leaderboard tr.reference td { font-style: italic; background: #fafafa; }
.ci, .n { color: #666; font-size: 0.75rem; } .rel { color: #0a5; font-size: 0.75rem; margin-left: 0.3rem; }
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
def tradeoff_plot_png(board: Leaderboard) -> bytes | None:
    """Efficacy (y) against specificity (x) per target, the Pareto front drawn as a step line; None without data."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    scores = board.scores()
    scores = scores[scores["efficacy"].notna() & scores["specificity"].notna()]
    if scores.empty:
        return None
    targets = list(dict.fromkeys(scores["target"]))
    ncols = min(3, len(targets))
    nrows = math.ceil(len(targets) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.8 * nrows), squeeze=False)
    relative = bool(scores["specificity_relative"].any())
    for ax, target in zip(axes.flat, targets):
        s = scores[scores["target"] == target].reset_index(drop=True)
        front = pareto_front(s["specificity"], s["efficacy"])
        for i, row in s.iterrows():
            ref = row["method"] == REFERENCE_METHOD
            xerr = _err(row, "specificity")
            yerr = _err(row, "efficacy")
            ax.errorbar(row["specificity"], row["efficacy"], xerr=xerr, yerr=yerr, fmt="s" if ref else "o",
                        color="#777" if ref else ("#c0392b" if front[i] else "#2c7fb8"), ecolor="#bbb",
                        elinewidth=1, capsize=2, markersize=6, zorder=3)
            ax.annotate(row["method"], (row["specificity"], row["efficacy"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7, parse_math=False)  # a label is text, never mathtext
        fs = s[front].sort_values("specificity", ascending=False)
        if len(fs) > 0:
            ax.step(fs["specificity"], fs["efficacy"], where="post", color="#c0392b", lw=1.2, alpha=0.8,
                    label="Pareto front", zorder=2)
            ax.legend(fontsize=7, loc="lower left")
        ax.set_title(f"target: {target}", fontsize=9, parse_math=False)
        ax.set_xlabel("specificity (relative to none)" if relative else "specificity", fontsize=8)
        ax.set_ylabel("efficacy (higher is better)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(targets):]:
        ax.axis("off")
    fig.tight_layout()
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
def table_html(board: Leaderboard) -> str:
    cols, rows, lookup = cells(board)
    ns = {c: column_n(board, c) for c in cols}
    out = ['<table id="leaderboard" class="leaderboard sortable">', "<thead>", "<tr>",
           '<th rowspan="2" data-col="0" data-best="asc">method</th>',
           '<th rowspan="2" data-col="1" data-best="asc">target</th>']
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
                   f'{esc(c[2])}">{esc(column_label(c))} {mark}{n}</th>')
    out += ["</tr>", "</thead>", "<tbody>"]
    for r in rows:
        cls = ' class="reference"' if r[0] == REFERENCE_METHOD else ""
        out.append(f"<tr{cls}>")
        out.append(f'<td data-sort="{esc(r[0])}">{esc(r[0])}</td><td data-sort="{esc(r[1])}">{esc(r[1])}</td>')
        for c in cols:
            rec = lookup.get((r, c))
            if rec is None or rec["value"] is None or math.isnan(rec["value"]):
                out.append('<td class="num" data-sort="">–</td>')
                continue
            text = esc(fmt_number(rec["value"]))
            if not (rec["ci_low"] == rec["value"] == rec["ci_high"]) and not math.isnan(rec["ci_low"]):
                text += f' <span class="ci">[{esc(fmt_number(rec["ci_low"]))}, {esc(fmt_number(rec["ci_high"]))}]</span>'
            if ns[c] is None:
                text += f' <span class="n">n={esc(fmt_n(rec["n"]))}</span>'
            rel = fmt_relative(rec)
            if rel:
                text += f' <span class="rel" title="relative to none">{esc(rel)}</span>'
            sort_key = repr(float(rec["value"]))
            out.append(f'<td class="num" data-sort="{sort_key}">{text}</td>')
        out.append("</tr>")
    out += ["</tbody>", "</table>"]
    return "\n".join(out)


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
<span class="rel">relative to the <code>none</code> row of the same target (Δ difference, % ratio)</span>.
↑/↓: higher/lower is better. Click a header to sort.</p>
{table_html(board)}
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
