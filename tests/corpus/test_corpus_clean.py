"""`clean` and `luodi corpus` end to end: the funnel over a small labelled corpus, the same
output on any number of workers, resuming after kill -9, recipes, and bad input named by file
and line."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from corpus_files import synthetic_corpus, write_jsonl
from corpus_texts import EN, EN_OTHER, ZH, ZH_OTHER

from luodi.corpus import clean
from luodi.corpus.recipe import CORPUS_STEPS, DOCUMENT_STEPS, RecipeError, default_recipe_text, load_recipe

REPO = Path(__file__).resolve().parents[2]


def luodi(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "luodi", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


LABELLED = [  # id, text, expected (stage, reason) or None for kept
    ("en-1", EN + " Write to clerk@town.gov for the minutes.", None),
    ("zh-1", ZH + "咨询电话13812345678。", None),
    ("en-2", EN_OTHER, None),
    ("zh-2", ZH_OTHER, None),
    ("en-copy", EN.upper() + " Write to clerk@town.gov for the minutes.", ("exact_dedup", "duplicate")),
    ("zh-near", ZH.replace("今天上午", "昨天下午") + "咨询电话13812345678。", ("near_dedup", "near_duplicate")),
    ("ja", "今日は天気がいいので、公園へ散歩に行きました。桜がとてもきれいでした。" * 3, ("language", "language_ja")),
    ("short", "A short note about the weather, which was fine.", ("length", "too_short")),
    ("ads", ZH_OTHER + "限时特价！全场包邮，立即购买还送优惠券，扫码加微信领取优惠，秒杀价只限今天，抢购下单再打折扣！", ("keywords", "ads_keywords")),
]


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("labelled")
    source = write_jsonl(folder / "in.jsonl", [{"id": i, "text": t, "source": "hand"} for i, t, _ in LABELLED])
    with source.open("a", encoding="utf-8") as f:
        f.write('{"id": "broken", "text": \n')
    out = folder / "out"
    clean([source], out)
    return out


def test_labelled_corpus_keeps_and_drops_as_labelled(labelled_run):
    kept = lines(labelled_run / "kept.jsonl")
    removed = {r["id"]: (r["stage"], r["reason"]) for r in lines(labelled_run / "removed.jsonl")}
    assert [k["id"] for k in kept] == [i for i, _, label in LABELLED if label is None]
    assert removed == {i: label for i, _, label in LABELLED if label is not None}
    by_id = {k["id"]: k for k in kept}
    assert by_id["en-1"]["text"].endswith("Write to [EMAIL] for the minutes.")
    assert by_id["zh-1"]["text"].endswith("咨询电话[PHONE]。")
    assert by_id["zh-1"]["stats"]["language"]["language"] == "zh"
    assert by_id["en-1"]["stats"]["pii"] == {"email": 1} and by_id["en-1"]["metadata"] == {"source": "hand"}


def test_report_is_a_consistent_funnel(labelled_run):
    report = json.loads((labelled_run / "report.json").read_text())
    stages = report["stages"]
    assert report["num_read"] == len(LABELLED) and report["num_kept"] == 4
    assert stages[0]["docs_in"] == len(LABELLED) and stages[-1]["docs_out"] == 4
    for before, after in zip(stages, stages[1:]):
        assert before["docs_out"] == after["docs_in"] and before["chars_out"] == after["chars_in"]
    for stage in stages:
        assert stage["docs_in"] - stage["docs_out"] == sum(stage["drops"].values())
    pii = next(s for s in stages if s["name"] == "pii")
    assert pii["counts"] == {"email": 2, "phone": 2}  # copies are masked before dedup drops them
    near = next(s for s in stages if s["name"] == "near_dedup")
    assert [x["id"] for x in near["samples"]["near_duplicate"]] == ["zh-near"]
    assert report["languages_before"] == {"en": 4, "zh": 4, "ja": 1}
    assert report["languages_after"] == {"en": 2, "zh": 2}
    assert len(report["input_errors"]) == 1 and "in.jsonl:10: bad JSON" in report["input_errors"][0]
    markdown = (labelled_run / "report.md").read_text()
    assert "| near_dedup | 5 | 4 | 1 |" in markdown and "in.jsonl:10" in markdown
    assert (labelled_run / "report.png").read_bytes().startswith(b"\x89PNG")


def test_workers_do_not_change_the_output(tmp_path):
    source = synthetic_corpus(tmp_path / "in.jsonl", 120)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(default_recipe_text().replace("shard_size: 1000", "shard_size: 25"))
    clean([source], tmp_path / "one", recipe=recipe, workers=1)
    clean([source], tmp_path / "two", recipe=recipe, workers=2)
    for name in ("kept.jsonl", "removed.jsonl", "report.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert len(lines(tmp_path / "one" / "kept.jsonl")) > 50


def test_kill_9_mid_run_then_rerun_equals_an_uninterrupted_run(tmp_path):
    source = synthetic_corpus(tmp_path / "in.jsonl", 300, seed=7)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(default_recipe_text().replace("shard_size: 1000", "shard_size: 5"))
    args = ["corpus", "clean", str(source), "--recipe", str(recipe), "--out"]
    assert luodi(*args, str(tmp_path / "whole")).returncode == 0

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.Popen([sys.executable, "-m", "luodi", *args, str(out)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = out / ".work" / "shards"
    while run.poll() is None and len(list(shards.glob("*.json"))) < 3:
        time.sleep(0.01)
    os.kill(run.pid, signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "kept.jsonl").exists()
    done = len(list(shards.glob("*.json")))

    resumed = luodi(*args, str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "kept.jsonl").read_bytes() == (tmp_path / "whole" / "kept.jsonl").read_bytes()
    assert (out / "removed.jsonl").read_bytes() == (tmp_path / "whole" / "removed.jsonl").read_bytes()
    report = json.loads((out / "report.json").read_text())
    assert report["num_resumed_shards"] >= done >= 3 and report["num_read"] == 300
    assert not (out / ".work").exists()


# -- recipes -----------------------------------------------------------------------------------

def test_default_recipe_names_every_step_default():
    """The printed recipe and the step classes agree, so leaving a parameter out changes nothing."""
    recipe = load_recipe(None)
    for spec in recipe.document_steps + recipe.corpus_steps:
        cls = (DOCUMENT_STEPS | CORPUS_STEPS)[spec.name]
        defaults = {f.name: getattr(cls(), f.name) for f in dataclasses.fields(cls) if not f.name.startswith("_")}
        assert {k: v for k, v in spec.params.items()} == defaults, spec.name
    assert [s.name for s in recipe.document_steps + recipe.corpus_steps] == list(DOCUMENT_STEPS | CORPUS_STEPS)


def test_recipe_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  - normalize: {}\n  - shout: {}\n")
    with pytest.raises(RecipeError, match=r"bad\.yaml:3: unknown step 'shout'; known steps: normalize"):
        load_recipe(bad)
    bad.write_text("steps:\n  - length:\n      min_words: 5\n")
    with pytest.raises(RecipeError, match=r"bad\.yaml:2: step 'length' has no parameter 'min_words'"):
        load_recipe(bad)
    bad.write_text("steps:\n  - exact_dedup: {}\n  - pii: {}\n")
    with pytest.raises(RecipeError, match=r"bad\.yaml:3: step 'pii' works per document"):
        load_recipe(bad)


# -- the command -------------------------------------------------------------------------------

def test_cli_clean_reports_bad_lines_and_goes_on(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": EN}, {"id": "b", "text": ZH}])
    with source.open("a") as f:
        f.write("not json\n" + json.dumps({"id": "c", "body": "no text field"}) + "\n")
    result = luodi("corpus", "clean", str(source), str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "in.jsonl:3: bad JSON" in result.stderr and "in.jsonl:4: no string field 'text'" in result.stderr
    assert "missing.jsonl: no such file" in result.stderr
    assert "2 documents read, 2 kept" in result.stdout
    assert [k["id"] for k in lines(tmp_path / "out" / "kept.jsonl")] == ["a", "b"]


def test_cli_errors_are_one_line_with_exit_codes(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps:\n  - normalize: {}\n  - bogus: {}\n")
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": EN}])
    bad_recipe = luodi("corpus", "clean", str(source), "--out", str(tmp_path / "o"), "--recipe", str(recipe))
    assert bad_recipe.returncode == 2 and "Traceback" not in bad_recipe.stderr
    assert "r.yaml:3: unknown step 'bogus'" in bad_recipe.stderr
    nothing = luodi("corpus", "clean", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o2"))
    assert nothing.returncode == 1 and "nope.jsonl: no such file or folder" in nothing.stderr
    executor = luodi("corpus", "clean", str(source), "--out", str(tmp_path / "o3"), "--executor", "spark")
    assert executor.returncode == 2 and "unknown executor 'spark'" in executor.stderr


def test_cli_recipe_prints_the_default_recipe():
    result = luodi("corpus", "recipe")
    assert result.returncode == 0 and result.stdout == default_recipe_text()
    assert [next(iter(s)) for s in yaml.safe_load(result.stdout)["steps"]][-2:] == ["exact_dedup", "near_dedup"]
    assert "keeps the first document of a cluster in input order" in result.stdout


def test_eval_counts_a_repair_only_when_it_restores_the_article(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import corpus_eval

    def garble(text: str) -> str:  # UTF-8 read as cp1252: ’ becomes â€™
        return text.encode("utf-8").decode("cp1252")

    restored = EN.replace("The mayor said", "The mayor’s office said")
    other = EN_OTHER.replace("Their measurements", "The station’s measurements")
    records = [{"id": "restored", "text": garble(restored), "original": restored},
               # the repair gives back an article one word away from the one recorded: not a repair
               {"id": "changed", "text": garble(other.replace("decade", "century")), "original": other}]
    kept, _, _ = corpus_eval.run_clean(records, tmp_path, 1, None)
    originals = corpus_eval.clean_originals(records, tmp_path, 1, None)
    assert "â€™" not in kept["restored"] and "â€™" not in kept["changed"]
    assert corpus_eval.is_repaired(records[0], kept, originals)
    assert not corpus_eval.is_repaired(records[1], kept, originals)
