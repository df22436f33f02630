"""The LLM steps of corpus cleaning: bits per character under SmolLM2 against the model's own
cross-entropy, the hashed n-gram classifier on a separable task and distilled from the LLM, the
percentile fine filter against hand-computed thresholds, and `luodi corpus clean --llm-filter`."""

from __future__ import annotations

import json
import math
import random
from os.path import commonprefix

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from corpus_files import prose, write_jsonl
from model_cache import pulled_model_path
from test_corpus_clean import lines, luodi

from luodi.corpus.llm_filter import LLMFilter, Thresholds, bucket, is_dropped, language_thresholds
from luodi.corpus.llm_score import BpcScorer
from luodi.corpus.quality import QualityClassifier, fit_classifier, spearman
from luodi.corpus.recipe import RecipeError, default_recipe_text, parse_recipe
from luodi.models.reference import full_logits

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def scorer() -> BpcScorer:
    # fp32, so the batched scores can be held to the single-sequence forward tightly
    return BpcScorer.load(str(pulled_model_path(MODEL)), dtype="float32", max_tokens=48, batch_tokens=192)


def word_salad(rng: random.Random, language: str) -> str:
    """The words (characters for zh) of a prose document, shuffled: fluent vocabulary, no sense."""
    text = prose(rng, language, 5)
    if language == "en":
        words = text.replace(".", "").split()
        rng.shuffle(words)
        return ". ".join(" ".join(words[i:i + 12]) for i in range(0, len(words), 12)) + "."
    chars = list(text.replace("。", ""))
    rng.shuffle(chars)
    return "。".join("".join(chars[i:i + 25]) for i in range(0, len(chars), 25)) + "。"


def fluent_and_salad(seed: int, num_per_kind: int) -> list[tuple[str, str, str]]:
    """(id, language, text): fluent prose and word salad, alternating, in both languages."""
    rng = random.Random(seed)
    docs = []
    for i in range(num_per_kind):
        for language in ("en", "zh"):
            # a unique first sentence: the LLM sees only a document's beginning, and these share sentences
            first = f"Record {i} of the archive." if language == "en" else f"档案馆第{i}号记录。"
            docs.append((f"{language}-prose-{i}", language, first + " " * (language == "en")
                         + prose(rng, language, rng.randrange(4, 7))))
            docs.append((f"{language}-salad-{i}", language, word_salad(rng, language)))
    return docs


# -- bits per character ------------------------------------------------------------------------

def oracle_bpc(scorer: BpcScorer, text: str, max_tokens: int) -> float:
    """Cross-entropy of the model's own logits over the text's first max_tokens tokens (the first,
    predicted from nothing, unscored), in bits per character of the text those tokens add."""
    tokenizer = scorer.tokenizer
    assert not tokenizer.add_bos_token  # SmolLM2: no BOS, so the first token is context only
    all_ids = tokenizer.encode(text, add_special_tokens=False)
    ids = all_ids[:max_tokens]
    logits = full_logits(scorer.model, ids)[:-1]
    nll = F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum").item()
    whole = tokenizer.decode(all_ids)
    def chars(k: int) -> int:  # a character split across tokens counts where it is completed
        return len(commonprefix([tokenizer.decode(all_ids[:k]), whole]))
    return nll / (chars(len(ids)) - chars(1)) / math.log(2)


def test_bits_per_char_is_the_models_cross_entropy_per_character(scorer):
    texts = ["The council agreed to fund the library for another five years.",
             "今天上午，市图书馆举办了一场关于阅读习惯的讲座。",
             "The mayor said that the decision reflects what the people asked for. " * 8,  # over max_tokens
             "Rain.", "x"]
    scores = scorer.score(texts)  # several share a forward pass
    for text, score in zip(texts[:4], scores):
        assert score.bits_per_char == pytest.approx(oracle_bpc(scorer, text, 48), rel=1e-5), text
    assert [s.is_truncated for s in scores] == [False, False, True, False, False]
    assert scores[2].num_tokens == 47
    assert scores[4].bits_per_char is None  # one token: nothing to predict


# -- the classifier ----------------------------------------------------------------------------

def toy_docs(rng: random.Random, n: int) -> list[tuple[str, str, float, bool]]:
    """(text, language, target, is_bad): bad documents use another vocabulary and score 3, good ones 1."""
    shared = "the of and to in is was for on with".split()
    good, bad = "river garden school market library music".split(), "casino bonus jackpot winner prize spin".split()
    zh_good, zh_bad = "图书馆学校河流音乐花园", "赌场奖金彩票中奖红包返利"
    docs = []
    for i in range(n):
        is_bad = rng.random() < 0.5
        if i % 2:
            words = rng.choices(shared, k=20) + rng.choices(bad if is_bad else good, k=4)
            rng.shuffle(words)
            docs.append((" ".join(words), "en", 3.0 if is_bad else 1.0, is_bad))
        else:
            chars = list("的了是在我们") * 3 + rng.choices(zh_bad if is_bad else zh_good, k=6)
            rng.shuffle(chars)
            docs.append(("".join(chars), "zh", 8.0 if is_bad else 6.0, is_bad))
    return docs


def test_classifier_learns_a_separable_task_and_survives_saving(tmp_path):
    rng = random.Random(0)
    train, held_out = toy_docs(rng, 60), toy_docs(rng, 40)
    classifier = fit_classifier([t for t, *_ in train], [lang for _, lang, *_ in train], [y for _, _, y, _ in train],
                                num_buckets=2**12)
    midpoint = {"en": 2.0, "zh": 7.0}
    predicted = [classifier.predict_bpc(t, lang) for t, lang, *_ in held_out]
    correct = [(p > midpoint[lang]) == is_bad for p, (_, lang, _, is_bad) in zip(predicted, held_out)]
    assert sum(correct) / len(correct) >= 0.95
    classifier.save(tmp_path / "clf")
    loaded = QualityClassifier.load(tmp_path / "clf")
    assert [loaded.predict_bpc(t, lang) for t, lang, *_ in held_out] == pytest.approx(predicted, rel=1e-5)
    assert loaded.languages == classifier.languages


def test_distilled_classifier_ranks_held_out_documents_like_the_teacher(scorer):
    docs = fluent_and_salad(seed=1, num_per_kind=12)  # 48 documents
    teacher = [s.bits_per_char for s in scorer.score([text for _, _, text in docs])]
    train, test = list(range(0, len(docs), 3)) + list(range(1, len(docs), 3)), list(range(2, len(docs), 3))
    classifier = fit_classifier([docs[i][2] for i in train], [docs[i][1] for i in train], [teacher[i] for i in train],
                                num_buckets=2**14)
    for language in ("en", "zh"):
        mine = [i for i in test if docs[i][1] == language]
        predicted = [classifier.predict_bpc(docs[i][2], language) for i in mine]
        assert spearman(predicted, [teacher[i] for i in mine]) > 0.6, language


# -- the fine filter ---------------------------------------------------------------------------

def test_fine_filter_cuts_at_each_languages_percentiles():
    step = LLMFilter(model="m", head_percentile=25, tail_percentile=75, drop_percentile=90)
    bpcs = [1.0, 7.0, 2.0, 3.0, None, 4.0, 9.0, 5.0]
    languages = ["en", "zh", "en", "en", "en", "en", "zh", "en"]
    thresholds = language_thresholds(bpcs, languages, step)
    # en scores 1..5: the 25th, 75th, 90th percentiles (linear) are 2, 4, 4.6; zh 7, 9: 7.5, 8.5, 8.8
    assert thresholds == {"en": Thresholds(2.0, 4.0, pytest.approx(4.6)), "zh": Thresholds(7.5, 8.5, pytest.approx(8.8))}
    dropped = [is_dropped(b, thresholds[lang]) for b, lang in zip(bpcs, languages)]
    assert dropped == [False, False, False, False, False, False, True, True]
    assert [bucket(b, thresholds[lang]) for b, lang in zip(bpcs, languages)] == \
        ["head", "head", "head", "middle", "unscored", "middle", "tail", "tail"]


def test_recipe_keeps_the_fine_filter_last_and_llm_steps_off_without_a_model():
    default = parse_recipe(default_recipe_text(), "default")
    off = default.with_llm_model(None)
    assert "quality" not in [s.name for s in off.document_steps] and off.final_steps == ()
    on = default.with_llm_model("some-model")
    assert [s.params["model"] for s in on.document_steps if s.name == "quality"] == ["some-model"]
    assert [s.params["model"] for s in on.final_steps] == ["some-model"]
    with pytest.raises(RecipeError, match=r"r:3: step 'near_dedup' must come before the steps over the kept output"):
        parse_recipe("steps:\n  - llm_filter: {}\n  - near_dedup: {}\n", "r")


def test_cli_llm_filter_end_to_end(tmp_path):
    docs = fluent_and_salad(seed=2, num_per_kind=8)  # 32 documents
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": t} for i, _, t in docs])
    recipe = tmp_path / "small.yaml"
    recipe.write_text(default_recipe_text().replace("sample_size: 2000", "sample_size: 16")
                      .replace("max_tokens: 512", "max_tokens: 64"))
    plain = luodi("corpus", "clean", str(source), "--out", str(tmp_path / "plain"), "--recipe", str(recipe))
    assert plain.returncode == 0, plain.stderr
    plain_stages = [s["name"] for s in json.loads((tmp_path / "plain" / "report.json").read_text())["stages"]]
    assert "quality" not in plain_stages and "llm_filter" not in plain_stages

    out = tmp_path / "out"
    result = luodi("corpus", "clean", str(source), "--out", str(out), "--recipe", str(recipe),
                   "--llm-filter", str(pulled_model_path(MODEL)))
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    stages = {s["name"]: s for s in report["stages"]}
    assert list(stages)[-3:] == ["exact_dedup", "near_dedup", "llm_filter"] and "quality" in stages
    assert json.loads((out / "quality_classifier.json").read_text())["info"]["num_documents"] == 16
    kept, removed = lines(out / "kept.jsonl"), lines(out / "removed.jsonl")
    assert report["num_kept"] == len(kept) and report["num_removed"] == len(removed)
    assert f"{len(docs)} documents read, {len(kept)} kept" in result.stdout
    thresholds = json.loads((out / "llm_filter.json").read_text())["bits_per_char"]
    for language in ("en", "zh"):
        survivors = [d for d in kept if d["id"].startswith(language)]
        fine_dropped = [r for r in removed if r["stage"] == "llm_filter" and r["id"].startswith(language)]
        n = len(survivors) + len(fine_dropped)  # what reached the fine filter; distinct scores
        assert len(fine_dropped) == n - 1 - math.floor(0.9 * (n - 1)), language  # above the 90th percentile
        for doc in survivors:
            assert "predicted_bpc" in doc["stats"]["quality"]
            assert doc["stats"]["llm_filter"]["bits_per_char"] <= thresholds[language]["drop"]
    assert stages["llm_filter"]["docs_in"] == stages["near_dedup"]["docs_out"]
    salad_kept = [d["id"] for d in kept if "salad" in d["id"]]
    assert len(salad_kept) <= 1, salad_kept  # the classifier and the fine filter see through word salad
    assert np.isfinite([d["stats"]["llm_filter"]["bits_per_char"] for d in kept]).all()
