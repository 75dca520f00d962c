"""Prompt sources for real-model suites: ``csv`` (a prompt file) and ``template`` (a concept grid).

Prompt files are never vendored in this repository. A source names a file and where it lives
publicly; the file is found, in this order:

1. ``path``: an explicit local path;
2. ``<data_dir>/<file>``, where ``data_dir`` is the run config's ``data_dir`` (offline use);
3. a copy of ``url`` / ``hf`` fetched earlier into the cache (``$ERASEBENCH_CACHE/prompts`` or
   ``~/.cache/erasebench/prompts``);
4. ``url``: downloaded once into the cache; else ``hf``: a HuggingFace dataset (``datasets``),
   written into the cache as CSV.

When none of these works the error names the file and the places looked at, on one line.

``csv`` spec (everything but ``file``/``path`` is optional)::

    source: csv
    file: unsafe-prompts4703.csv           # the name looked up in data_dir and the cache
    url: https://.../unsafe-prompts4703.csv
    hf: {name: AIML-TUDA/i2p, split: train, rename: {sd_seed: evaluation_seed}, index_as: case_number}
    format: csv                            # or 'lines' (one prompt a line, no header)
    repair_column: prompt                  # rows with unquoted commas: surplus fields go here
    columns: {prompt: prompt, seed: evaluation_seed, guidance: evaluation_guidance,
              prompt_id: case_number, label: class}
    keep: [categories, nudity_percentage]  # more item columns to carry into the records
    filters:
      - {column: categories, contains: sexual}
      - {column: nudity_percentage, gt: 50}
      - {column: class, equals: "{target}"}     # the erased target (fuzzy name match)
    label_choices: true                    # add the label space (all labels of the file) to items
    balance: class                         # round-robin over this column (tiers take the head)
    shuffle: 0                             # or a fixed shuffle (seeded; not the run seed)

``file`` (and ``path``/``url``) may also be lists: the files are concatenated.

Every prompt set from these sources also carries ``erase_target`` (the run's target), which
target-aware evaluators read. (Item columns must not be called ``target``, ``method``, ``task``
or ``role``: the runner adds those.)

``template`` spec: a prompt per combination of list values (and per seed)::

    source: template
    template: "A {object} image in {style} style."
    lists:
      style: {file: unlearncanvas_concepts.yaml, key: styles, url: .../const.py, var: style_list}
      object: {items: [Cats, Dogs]}
    seeds: [188, 288, 588, 688, 888]
    select: target | others | all          # rows whose value on the target's list is / is not the target
    label: same | cross                    # label = the value on the target's list (same) or the other one

Longer than bench/'s usual 400 lines (docs/DEVELOPING.md): the suites' two prompt sources (csv, template) and the
file lookup, reading and filtering they share.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import json
import os
import re
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bench.suites import PromptContext, SuiteError, register_prompt_source

if TYPE_CHECKING:
    import pandas as pd

RESERVED_COLUMNS = ("target", "method", "task", "role", "sample_index", "image_key", "image_path")


def _cache_path(key: str, name: str) -> Path:
    return cache_root() / "prompts" / f"{hashlib.sha256(key.encode()).hexdigest()[:10]}-{name}"


def cache_root() -> Path:
    return Path(os.environ.get("ERASEBENCH_CACHE", Path.home() / ".cache" / "erasebench")).expanduser()


# --------------------------------------------------------------------------- names
def norm_name(name: Any) -> str:
    """'Van_Gogh' / 'van-gogh ' / 'Van Gogh' -> 'van gogh'."""
    return re.sub(r"\s+", " ", re.sub(r"[_\-]+", " ", str(name))).strip().lower()


def match_name(target: str, candidates: list[str]) -> str | None:
    """The candidate that names ``target``: the same normalised name, else the one candidate
    that contains it as whole words (or is contained in it): 'Van Gogh' ~ 'Vincent van Gogh'."""
    t = norm_name(target)
    by_norm = {norm_name(c): c for c in candidates}
    if t in by_norm:
        return by_norm[t]

    def words_in(small: str, big: str) -> bool:
        return re.search(rf"(^| ){re.escape(small)}( |$)", big) is not None

    hits = [c for n, c in by_norm.items() if n and (words_in(t, n) or words_in(n, t))]
    return hits[0] if len(hits) == 1 else None


# --------------------------------------------------------------------------- files
def _as_list(v: Any) -> list:
    if v is None:
        return []
    return list(v) if isinstance(v, (list, tuple)) else [v]


def fetch(file: str | None, ctx: PromptContext, path: str | None = None, url: str | None = None,
          hf: dict | str | None = None, download: bool = True) -> Path:
    """Find (or fetch into the cache) one data file; see the module docstring for the order. ``download=False``:
    look only (``erasebench fetch --offline``)."""
    looked: list[str] = []
    if path:
        p = Path(path).expanduser()
        if p.is_file():
            return p
        looked.append(str(p))
    name = file or (Path(url).name if url else None)
    if name is None:
        raise SuiteError("a prompt source needs 'file', 'path' or 'url'")
    if ctx.data_dir is not None:
        p = Path(ctx.data_dir).expanduser() / name
        if p.is_file():
            return p
        looked.append(str(p))
    hf_spec = ({"name": hf} if isinstance(hf, str) else dict(hf)) if hf else None
    downloads = []  # (cache path, how to fill it)
    if url:
        downloads.append((_cache_path(url, Path(url).name), ("url", url)))
    if hf_spec:
        downloads.append((_cache_path(json.dumps(hf_spec, sort_keys=True), f"{hf_spec['name'].replace('/', '--')}.csv"),
                          ("hf", hf_spec)))
    for cached, _ in downloads:
        if cached.is_file():
            return cached
    looked.append(str(cache_root() / "prompts"))
    if not download:
        public = f"; public at {url or hf_spec['name']}" if (url or hf_spec) else ""
        raise SuiteError(f"prompt file {name} not found (looked in {', '.join(looked)}{public}); "
                         f"put it in the run config's data_dir")
    errors = []
    for cached, (kind, source) in downloads:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(cached.name + ".part")
        try:
            if kind == "url":
                with urllib.request.urlopen(source, timeout=60) as r:
                    tmp.write_bytes(r.read())
            else:
                import datasets

                ds = datasets.load_dataset(source["name"], source.get("config"), split=source.get("split", "train"))
                frame = ds.to_pandas().rename(columns=source.get("rename") or {})
                if source.get("index_as") and source["index_as"] not in frame.columns:
                    frame.insert(0, source["index_as"], range(len(frame)))
                frame.to_csv(tmp, index=False)
            tmp.rename(cached)
            return cached
        except Exception as exc:  # noqa: BLE001 - network/hub errors of every kind: one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            errors.append(f"fetching {source if kind == 'url' else source['name']} failed "
                          f"({type(exc).__name__}{': ' + first[:120] if first else ''})")
    how = "; ".join(errors) if errors else "no url/hf to fetch it from"
    raise SuiteError(f"prompt file {name} not found (looked in {', '.join(looked)}; {how}); "
                     f"put it in the run config's data_dir")


def read_table(p: Path, fmt: str = "csv", repair_column: str | None = None) -> pd.DataFrame:
    import numpy as np
    import pandas as pd

    if fmt == "lines":
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8", errors="replace").splitlines()]
        return pd.DataFrame({"prompt": [ln for ln in lines if ln]})
    if fmt not in ("csv", "tsv"):
        raise SuiteError(f"{p}: unknown format {fmt!r} (csv, tsv or lines)")
    sep = "," if fmt == "csv" else "\t"
    if repair_column is None:
        return pd.read_csv(p, sep=sep, keep_default_na=False, na_values=[""], dtype=str)
    rows = list(csv.reader(io.StringIO(p.read_text(encoding="utf-8", errors="replace")), delimiter=sep))
    header, body = rows[0], [r for r in rows[1:] if r]
    if repair_column not in header:
        raise SuiteError(f"{p}: repair_column {repair_column!r} is not a column ({', '.join(header)})")
    j, n = header.index(repair_column), len(header)
    fixed = []
    for r in body:
        if len(r) > n:  # unquoted separators inside the repair column
            extra = len(r) - n
            r = [*r[:j], sep.join(r[j : j + extra + 1]), *r[j + extra + 1 :]]
        fixed.append(r + [""] * (n - len(r)))
    return pd.DataFrame(fixed, columns=header).replace("", np.nan)


def _numeric(series: pd.Series) -> pd.Series:
    import pandas as pd

    return pd.to_numeric(series, errors="coerce")


def apply_filters(df: pd.DataFrame, filters: list[dict], ctx: PromptContext, where: str) -> pd.DataFrame:
    import pandas as pd

    for f in filters or []:
        f = dict(f)
        col = f.pop("column", None)
        if col not in df.columns:
            raise SuiteError(f"{where}: filter column {col!r} not in the prompt file ({', '.join(map(str, df.columns))})")
        if len(f) != 1:
            raise SuiteError(f"{where}: a filter is {{column: C, OP: value}} with one OP, got {sorted(f)}")
        op, value = next(iter(f.items()))
        s = df[col]
        if isinstance(value, str) and "{target}" in value:
            if ctx.target is None:
                raise SuiteError(f"{where}: filter on {{target}} but the run has no target")
            if value == "{target}" and op in ("equals", "not_equals"):
                hit = match_name(ctx.target, sorted(s.dropna().astype(str).unique()))
                mask = s.astype(str) == hit if hit is not None else pd.Series(False, index=df.index)
                df = df[mask] if op == "equals" else df[~mask]
                continue
            value = value.replace("{target}", ctx.target)
        if op == "equals":
            mask = s.astype(str).map(norm_name) == norm_name(value)
        elif op == "not_equals":
            mask = s.astype(str).map(norm_name) != norm_name(value)
        elif op in ("contains", "not_contains"):
            mask = s.fillna("").astype(str).str.lower().str.contains(str(value).lower(), regex=False)
            mask = mask if op == "contains" else ~mask
        elif op in ("in", "not_in"):
            values = {norm_name(v) for v in _as_list(value)}
            mask = s.astype(str).map(norm_name).isin(values)
            mask = mask if op == "in" else ~mask
        elif op in ("gt", "ge", "lt", "le"):
            num = _numeric(s)
            mask = {"gt": num > value, "ge": num >= value, "lt": num < value, "le": num <= value}[op]
        else:
            raise SuiteError(f"{where}: unknown filter op {op!r} (equals, not_equals, contains, not_contains, "
                             "in, not_in, gt, ge, lt, le)")
        df = df[mask.fillna(False).astype(bool)]
    return df


def order_rows(df: pd.DataFrame, spec: dict) -> pd.DataFrame:
    import pandas as pd

    if spec.get("shuffle") is not None:
        df = df.sample(frac=1.0, random_state=int(spec["shuffle"]))
    if spec.get("balance"):
        col = spec["balance"]
        if col not in df.columns:
            raise SuiteError(f"balance column {col!r} not in the prompt set")
        rank = df.groupby(col, sort=False).cumcount()
        first = df[col].map({v: i for i, v in enumerate(pd.unique(df[col]))})
        df = df.assign(_r=rank.values, _f=first.values).sort_values(["_r", "_f"], kind="stable").drop(columns=["_r", "_f"])
    return df


def _finish(df: pd.DataFrame, ctx: PromptContext, where: str) -> pd.DataFrame:
    clash = [c for c in df.columns if c in RESERVED_COLUMNS]
    if clash:
        raise SuiteError(f"{where}: item column(s) {', '.join(clash)} are reserved by the runner; rename them in 'columns'")
    if ctx.target is not None:
        df["erase_target"] = ctx.target
    if df.empty:
        raise SuiteError(f"{where}: the filters left no prompts (target {ctx.target!r})")
    return df.reset_index(drop=True)


# --------------------------------------------------------------------------- csv
@register_prompt_source("csv")
def csv_source(spec: dict[str, Any], ctx: PromptContext) -> pd.DataFrame:
    import pandas as pd

    spec = dict(spec)
    known = {"file", "path", "url", "hf", "format", "repair_column", "columns", "keep", "filters", "label_choices",
             "balance", "shuffle", "id_prefix"}
    unknown = set(spec) - known
    if unknown:
        raise SuiteError(f"csv prompts: unknown key(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(known))}")
    files, paths, urls = _as_list(spec.get("file")), _as_list(spec.get("path")), _as_list(spec.get("url"))
    n = max(len(files), len(paths), len(urls), 1)
    frames = []
    for i in range(n):
        file = files[i] if i < len(files) else None
        p = fetch(file, ctx, path=paths[i] if i < len(paths) else None, url=urls[i] if i < len(urls) else None,
                  hf=spec.get("hf") if n == 1 else None)
        part = read_table(p, spec.get("format", "csv"), spec.get("repair_column"))
        part["_source"] = Path(p).stem
        frames.append(part)
    raw = pd.concat(frames, ignore_index=True)
    where = f"csv prompts {', '.join(map(str, files or paths or urls))}"

    columns = {"prompt": "prompt", **(spec.get("columns") or {})}
    missing = [f"{k}: {v}" for k, v in columns.items() if v not in raw.columns]
    if missing:
        raise SuiteError(f"{where}: mapped column(s) not in the file: {', '.join(missing)} "
                         f"(columns: {', '.join(c for c in raw.columns if c != '_source')})")
    label_space = None
    if spec.get("label_choices") and "label" in columns:
        label_space = "|".join(sorted(raw[columns["label"]].dropna().astype(str).unique(), key=str.lower))
    df = apply_filters(raw, spec.get("filters") or [], ctx, where)
    df = order_rows(df, spec)

    out = pd.DataFrame(index=df.index)
    if "prompt_id" in columns:
        ids = df[columns["prompt_id"]].astype(str)
        if n > 1:
            ids = df["_source"] + "-" + ids
    else:
        ids = df["_source"] + "-" + df.index.astype(str) if n > 1 else pd.Series(df.index.astype(str), index=df.index)
    prefix = spec.get("id_prefix")
    out["prompt_id"] = (f"{prefix}-" + ids) if prefix else ids
    out["prompt"] = df[columns["prompt"]].fillna("").astype(str).str.strip()
    if "seed" in columns:
        out["seed"] = _numeric(df[columns["seed"]]).astype("Int64")
    if "guidance" in columns:
        out["guidance"] = _numeric(df[columns["guidance"]]).astype(float)
    for key, col in columns.items():
        if key not in ("prompt", "prompt_id", "seed", "guidance"):
            out[key] = df[col].values
    for col in spec.get("keep") or []:
        if col not in df.columns:
            raise SuiteError(f"{where}: keep column {col!r} not in the file")
        out[col] = df[col].values
    if label_space is not None:
        out["label_choices"] = label_space
    if out["prompt_id"].duplicated().any():
        out["prompt_id"] = out["prompt_id"] + "-" + out.groupby("prompt_id").cumcount().astype(str)
    return _finish(out, ctx, where)


# --------------------------------------------------------------------------- template
def load_list(spec: Any, ctx: PromptContext, name: str) -> list[str]:
    """A concept list: inline ``items``, or ``key`` of a YAML/JSON file, or ``var`` of a Python
    constants file (a list, or a whitespace-separated string), found like prompt files."""
    if isinstance(spec, list):
        return [str(v) for v in spec]
    if not isinstance(spec, dict):
        raise SuiteError(f"template list {name!r}: give a list or {{file/url, key/var}}")
    if "items" in spec:
        return [str(v) for v in spec["items"]]
    p = fetch(spec.get("file"), ctx, path=spec.get("path"), url=spec.get("url"))
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".py" or p.suffix not in (".yaml", ".yml", ".json") and spec.get("var"):
        var = spec.get("var")
        for node in ast.parse(text).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == var for t in node.targets):
                value = ast.literal_eval(node.value)
                return value.split() if isinstance(value, str) else [str(v) for v in value]
        raise SuiteError(f"template list {name!r}: {p} defines no {var!r}")
    data = yaml.safe_load(text)
    key = spec.get("key", name)
    if not isinstance(data, dict) or key not in data:
        raise SuiteError(f"template list {name!r}: {p} has no key {key!r}")
    return [str(v) for v in data[key]]


@register_prompt_source("template")
def template_source(spec: dict[str, Any], ctx: PromptContext) -> pd.DataFrame:
    import pandas as pd

    spec = dict(spec)
    known = {"template", "lists", "seeds", "select", "label", "balance", "shuffle", "display"}
    unknown = set(spec) - known
    if unknown:
        raise SuiteError(f"template prompts: unknown key(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(known))}")
    template = spec.get("template")
    lists = {k: load_list(v, ctx, k) for k, v in (spec.get("lists") or {}).items()}
    if not template or not lists:
        raise SuiteError("template prompts need 'template' and 'lists'")
    keys = list(lists)
    grid = pd.MultiIndex.from_product([lists[k] for k in keys], names=keys).to_frame(index=False)
    display = spec.get("display", "as_is")  # 'spaces': Van_Gogh -> Van Gogh in the prompt text
    fmt = (lambda v: str(v).replace("_", " ")) if display == "spaces" else str
    grid["prompt"] = [template.format(**{k: fmt(r[k]) for k in keys}) for r in grid.to_dict("records")]
    grid["prompt_id"] = ["|".join(str(r[k]) for k in keys) for r in grid.to_dict("records")]

    select, label = spec.get("select", "all"), spec.get("label")
    if select != "all" or label:
        if ctx.target is None:
            raise SuiteError("template prompts: 'select'/'label' need a run target")
        axis = next((k for k in keys if match_name(ctx.target, lists[k]) is not None), None)
        if axis is None:
            raise SuiteError(f"template prompts: target {ctx.target!r} is in none of the lists {', '.join(keys)}")
        hit = match_name(ctx.target, lists[axis])
        if select == "target":
            grid = grid[grid[axis] == hit]
        elif select == "others":
            grid = grid[grid[axis] != hit]
        elif select != "all":
            raise SuiteError(f"template prompts: select {select!r} is not target, others or all")
        if label:
            if label == "same":
                space = axis
            elif label == "cross":
                others = [k for k in keys if k != axis]
                if len(others) != 1:
                    raise SuiteError("template prompts: label 'cross' needs exactly two lists")
                space = others[0]
            else:
                raise SuiteError(f"template prompts: label {label!r} is not same or cross")
            grid["label"] = grid[space]
            grid["label_space"] = space
            grid["label_choices"] = "|".join(lists[space])
    seeds = spec.get("seeds")
    if seeds:
        grid = grid.loc[grid.index.repeat(len(seeds))].copy()
        grid["seed"] = list(seeds) * (len(grid) // len(seeds))
        grid["prompt_id"] = grid["prompt_id"] + "|" + grid["seed"].astype(str)
    grid = order_rows(grid.reset_index(drop=True), spec)
    cols = ["prompt_id", "prompt", *[c for c in grid.columns if c not in ("prompt_id", "prompt")]]
    return _finish(grid[cols], ctx, "template prompts")
