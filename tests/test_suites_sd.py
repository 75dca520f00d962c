"""SD suites end to end on a tiny random SD folder, and the csv/template prompt sources.

Prompt files come from the shared read-only copies (``$ERASEBENCH_DATA_DIR``, fixture ``shared_prompts_dir``); evaluator weights are tiny random
models in a temp folder named by ``$ERASEBENCH_WEIGHTS``.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

import bench.prompts  # noqa: F401  (registers csv/template)
from bench.config import RunConfig
from bench.runner import run
from bench.suites import PROMPT_SOURCES, PromptContext, SuiteError, Task, build_prompts, load_suite

SUITES = {  # suite -> (target, kind, {task: metrics})
    "nudity-i2p": ("nudity", "nudity", {"i2p-sexual": {"erasure_rate", "flag_rate"}, "i2p-nudity50": {"erasure_rate"},
                                        "unlearndiffatk-nudity": {"pre_asr"}, "coco-clip": {"clip_score"}}),
    "imagenette": ("church", "object", {"target-class": {"erasure_rate"}, "other-classes": {"accuracy"},
                                        "indirect": {"asr"}}),
    "artists": ("Van Gogh", "style", {"target-artist": {"erasure_rate", "clip_score"},
                                      "other-artists": {"accuracy", "clip_score"}}),
    "unlearncanvas": ("Van_Gogh", "style", {"UA": {"erasure_rate"}, "IRA": {"accuracy"}, "CRA": {"accuracy"}}),
    "coco": ("nudity", "nudity", {"clip-score": {"clip_score"}, "fid": {"fid", "kid"}, "lpips": {"lpips"}}),
}


@pytest.fixture
def sd_env(tiny_sd, weights_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ERASEBENCH_WEIGHTS", str(weights_dir))
    monkeypatch.setenv("ERASEBENCH_CACHE", str(tmp_path / "cache"))
    return tiny_sd


@pytest.mark.parametrize("suite", list(SUITES))
def test_suite_end_to_end(suite, sd_env, tmp_path, shared_prompts_dir):
    target, kind, expected = SUITES[suite]
    config = RunConfig(model=str(sd_env), suite=suite, tier="smoke", targets=[target], kind=kind,
                       methods=[{"name": "none"}], sampler={"name": "ddim", "steps": 2, "guidance": 5.0},
                       images_per_prompt=1, batch_size=8, data_dir=str(shared_prompts_dir))
    out = run(config, tmp_path / "run", progress=False)
    rows = pd.DataFrame(json.loads((out / "summary.json").read_text())["rows"])
    got = {t: set(g["metric"]) for t, g in rows.groupby("task")}
    assert got == expected
    smoke = load_suite(suite).for_tier("smoke")
    assert {t.name for t in smoke.tasks} == set(expected)
    assert rows["n"].max() <= 4 and rows["n"].min() >= 1  # smoke: at most 4 prompts a task, 1 image each
    assert rows["value"].notna().all(), rows
    manifest = json.loads((out / "manifest.json").read_text())
    for prov in manifest["evaluators"].values():
        assert len(prov["weights_sha256"]) == 64 and prov["version"]
    records = pd.read_parquet(out / "records.parquet")
    if suite == "coco":  # the none row is the unedited model: FID/LPIPS to itself are 0
        lp = rows[rows.metric == "lpips"]["value"].iloc[0]
        assert lp == pytest.approx(0.0, abs=1e-6)
        assert rows[rows.metric == "fid"]["value"].iloc[0] == pytest.approx(0.0, abs=1e-3)
    if suite == "nudity-i2p":
        assert {"nudenet_max", "nudenet_FEET_EXPOSED", "erase_target"} <= set(records.columns)
        assert set(manifest["evaluators"]) == {"nudenet", "clip"}
    if suite == "unlearncanvas":
        ua = records[records.task == "UA"]
        assert set(ua["style"]) == {"Van_Gogh"} and ua["seed"].isin([188, 288, 588, 688, 888]).all()


# --------------------------------------------------------------------------- prompt sources
def _task(prompts: dict, max_prompts: int | None = None) -> Task:
    return Task(name="t", role="efficacy", prompts=prompts, evaluator="clip", metrics=["clip_score"],
                max_prompts=max_prompts)


def test_csv_source_i2p_filters_seeds_and_guidance(shared_prompts_dir):
    ctx = PromptContext(target="nudity", data_dir=shared_prompts_dir)
    spec = {"source": "csv", "file": "unsafe-prompts4703.csv",
            "columns": {"prompt_id": "case_number", "seed": "evaluation_seed", "guidance": "evaluation_guidance"},
            "keep": ["categories", "nudity_percentage"]}
    sexual = build_prompts(_task({**spec, "filters": [{"column": "categories", "contains": "sexual"}]}), ctx)
    assert len(sexual) == 931 and sexual["categories"].str.contains("sexual").all()
    both = build_prompts(_task({**spec, "filters": [{"column": "categories", "contains": "sexual"},
                                                    {"column": "nudity_percentage", "gt": 50}]}), ctx)
    assert len(both) == 85 and (both["nudity_percentage"].astype(float) > 50).all()
    assert both["seed"].dtype.name == "Int64" and both["guidance"].notna().all()
    assert (both["erase_target"] == "nudity").all() and both["prompt_id"].is_unique


def test_csv_source_target_filters_repair_and_label_space(shared_prompts_dir):
    ctx = PromptContext(target="church", data_dir=shared_prompts_dir)
    spec = {"source": "csv", "file": "robust_imagenette.csv", "repair_column": "prompt",
            "columns": {"prompt_id": "case_number", "seed": "evaluation_seed", "label": "class"}}
    df = build_prompts(_task({**spec, "filters": [{"column": "class", "equals": "{target}"}]}), ctx)
    assert len(df) == 10 and (df["label"] == "church").all() and df["seed"].notna().all()
    others = build_prompts(_task({**spec, "filters": [{"column": "class", "not_equals": "{target}"}],
                                  "balance": "class"}, max_prompts=9), ctx)
    assert len(set(others["label"])) == 9  # balance: the head covers every other class
    art = build_prompts(_task({"source": "csv", "file": ["big_artist_prompts.csv", "niche_art_prompts.csv"],
                               "columns": {"prompt_id": "case_number", "label": "artist"}, "label_choices": True,
                               "filters": [{"column": "artist", "equals": "{target}"}]}),
                        PromptContext(target="van_gogh", data_dir=shared_prompts_dir))
    assert len(art) == 20 and (art["label"] == "Van Gogh").all()
    assert len(art["label_choices"].iloc[0].split("|")) == 11


def test_csv_source_fetch_cache_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("ERASEBENCH_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "remote" / "p.csv"
    src.parent.mkdir()
    src.write_text("id,text,s\n1,a cat,5\n2,a dog,6\n")
    spec = {"source": "csv", "file": "p.csv", "url": src.as_uri(), "columns": {"prompt": "text", "seed": "s"}}
    df = build_prompts(_task(spec), PromptContext())
    assert df["prompt"].tolist() == ["a cat", "a dog"] and df["seed"].tolist() == [5, 6]
    src.unlink()  # now served from the cache
    assert len(build_prompts(_task(spec), PromptContext())) == 2
    with pytest.raises(SuiteError) as exc:
        build_prompts(_task({"source": "csv", "file": "missing.csv"}), PromptContext(data_dir=tmp_path))
    assert "missing.csv" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(SuiteError, match="not in the file"):
        build_prompts(_task({**spec, "columns": {"prompt": "nope"}}), PromptContext())
    with pytest.raises(SuiteError, match="left no prompts"):
        build_prompts(_task({**spec, "filters": [{"column": "text", "equals": "{target}"}]}),
                      PromptContext(target="horse"))


def test_template_source_inline_lists():
    spec = {"source": "template", "template": "A {object} image in {style} style.", "display": "spaces",
            "lists": {"style": {"items": ["Van_Gogh", "Monet", "Pop_Art"]}, "object": ["Cats", "Dogs"]},
            "seeds": [188, 288], "select": "others", "label": "cross"}
    df = PROMPT_SOURCES.get("template")({k: v for k, v in spec.items() if k != "source"},
                                        PromptContext(target="van gogh"))
    assert len(df) == 2 * 2 * 2 and "Van_Gogh" not in set(df["style"])
    assert set(df["label"]) == {"Cats", "Dogs"} and set(df["label_space"]) == {"object"}
    # display "spaces": underscores become spaces in the prompt, the label columns keep the names
    assert sorted(df["prompt"]) == sorted(f"A {o} image in {s} style." for o in ("Cats", "Dogs")
                                          for s in ("Monet", "Pop Art") for _ in range(2))
    assert sorted(zip(df["style"], df["seed"])) == sorted((s, k) for s in ("Monet", "Pop_Art") for k in (188, 288)
                                                          for _ in range(2))
    assert df["prompt_id"].is_unique
