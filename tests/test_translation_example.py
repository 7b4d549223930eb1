"""The synthetic EN-ZH data set of examples/translation.py: readings, splits, TSV."""

import datetime
import importlib.util
import os

import pytest

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "translation.py")
_SPEC = importlib.util.spec_from_file_location("translation_example", _PATH)
translation = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(translation)

# Hand-written readings (not produced by the code under test).
NUMBERS = [
    (0, "zero", "零"),
    (1, "one", "一"),
    (7, "seven", "七"),
    (10, "ten", "十"),
    (11, "eleven", "十一"),
    (15, "fifteen", "十五"),
    (19, "nineteen", "十九"),
    (20, "twenty", "二十"),
    (21, "twenty-one", "二十一"),
    (42, "forty-two", "四十二"),
    (99, "ninety-nine", "九十九"),
    (100, "one hundred", "一百"),
    (101, "one hundred and one", "一百零一"),
    (110, "one hundred and ten", "一百一十"),
    (111, "one hundred and eleven", "一百一十一"),
    (119, "one hundred and nineteen", "一百一十九"),
    (205, "two hundred and five", "二百零五"),
    (250, "two hundred and fifty", "二百五十"),
    (999, "nine hundred and ninety-nine", "九百九十九"),
    (1000, "one thousand", "一千"),
    (1001, "one thousand and one", "一千零一"),
    (1010, "one thousand and ten", "一千零一十"),
    (1011, "one thousand and eleven", "一千零一十一"),
    (1100, "one thousand one hundred", "一千一百"),
    (1105, "one thousand one hundred and five", "一千一百零五"),
    (1234, "one thousand two hundred and thirty-four", "一千二百三十四"),
    (2000, "two thousand", "二千"),
    (2020, "two thousand and twenty", "二千零二十"),
    (3042, "three thousand and forty-two", "三千零四十二"),
    (3400, "three thousand four hundred", "三千四百"),
    (5060, "five thousand and sixty", "五千零六十"),
    (7008, "seven thousand and eight", "七千零八"),
    (9999, "nine thousand nine hundred and ninety-nine", "九千九百九十九"),
]


@pytest.mark.parametrize("number,english,chinese", NUMBERS)
def test_number_readings(number, english, chinese):
    assert translation.english_number(number) == english
    assert translation.chinese_number(number) == chinese


def test_number_readings_are_one_to_one_and_checked():
    english = {translation.english_number(n) for n in range(10000)}
    chinese = {translation.chinese_number(n) for n in range(10000)}
    assert len(english) == len(chinese) == 10000
    for bad in (-1, 10000, 2.5):
        with pytest.raises(ValueError):
            translation.chinese_number(bad)
        with pytest.raises(ValueError):
            translation.english_number(bad)


def test_dates():
    date = datetime.date(2021, 3, 5)
    assert translation.english_date(date) == "March 5, 2021"
    assert translation.chinese_date(date) == "2021年3月5日"
    assert translation.chinese_date(datetime.date(1999, 12, 31)) == "1999年12月31日"


def test_splits_are_disjoint_deterministic_and_sized():
    splits = translation.synthetic_pairs(seed=0)
    assert {k: len(v) for k, v in splits.items()} == {"train": 750, "dev": 200, "test": 400}
    sources = {k: {s for s, _ in v} for k, v in splits.items()}
    targets = {k: {t for _, t in v} for k, v in splits.items()}
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        assert not sources[a] & sources[b] and not targets[a] & targets[b]
    assert translation.synthetic_pairs(seed=0) == splits
    assert translation.synthetic_pairs(seed=1)["test"] != splits["test"]
    dates = sum("年" in t for _, t in splits["test"])
    assert dates == 80  # one test pair in five is a date
    assert all(t == translation.chinese_number(_number(s)) for s, t in splits["test"] if "年" not in t)


def _number(english):
    return next(n for n in range(10000) if translation.english_number(n) == english)


def test_orient_and_tsv_round_trip(tmp_path):
    from keras_selffb.data import load_pairs

    pairs = [("three thousand and forty-two", "三千零四十二"), ("March 5, 2021", "2021年3月5日")]
    assert translation.orient(pairs, "zh-en") == [(z, e) for e, z in pairs]
    path = translation.write_tsv(str(tmp_path / "pairs.tsv"), pairs, translation.SYNTHETIC_LABEL)
    assert load_pairs(path) == pairs
    assert "SYNTHETIC" in open(path + ".LABEL", encoding="utf-8").read()
    with pytest.raises(ValueError, match="direction"):
        translation.orient(pairs, "en-fr")


def test_held_out_scores_use_zh_tokenization_and_match_sacrebleu():
    import sacrebleu

    refs = ["三千零四十二", "2021年3月5日", "一百零一"]
    hyps = ["三千零四十", "2021年3月5日", "一百零一"]
    scores = translation.held_out_scores(refs, hyps)
    assert translation.target_tokenize(refs) == "zh"
    assert scores["bleu"] == round(sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh").score, 2)
    assert scores["chrf"] == round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2)
    assert scores["exact_match"] == round(200 / 3, 2)
    assert translation.target_tokenize(["three", "four"]) == "13a"


def test_unlabelled_sources_are_new_values():
    splits = translation.synthetic_pairs(seed=0)
    sources = translation.unlabelled_sources(seed=0, size=500, sample_seed=3)
    labelled = {zh for pairs in splits.values() for _, zh in pairs}
    assert len(sources) == len(set(sources)) == 500 and not set(sources) & labelled
    assert sum("年" in s for s in sources) == 100  # one in five is a date
    assert translation.unlabelled_sources(seed=0, size=500, sample_seed=3) == sources
    english = translation.unlabelled_sources(seed=0, size=500, sample_seed=3, language="en")
    assert not set(english) & {en for pairs in splits.values() for en, _ in pairs}


def untrained_reverse_model(seed):
    """(ZH, EN) training pairs, a character tokenizer of them and an untrained EN->ZH policy."""
    import keras

    from keras_selffb.models import PolicyNetwork
    from keras_selffb.text import CharTokenizer

    pairs = [(zh, en) for en, zh in translation.synthetic_pairs(seed=0)["train"][:40]]
    tokenizer = CharTokenizer.train([t for pair in pairs for t in pair])
    keras.utils.set_random_seed(seed)
    return pairs, tokenizer, PolicyNetwork(tokenizer.vocabulary_size, embedding_dim=8, hidden_dim=16)


@pytest.mark.filterwarnings("ignore:.*kept their last tokens")
def test_roundtrip_reward_matches_sacrebleu_on_the_back_translation():
    import numpy as np
    import sacrebleu

    from keras_selffb.generator import ResponseGenerator
    from keras_selffb.text import pack_pairs

    pairs, tokenizer, reverse = untrained_reverse_model(7)
    prompt_length, response_length = 14, 48
    reverse_prompt_length, reverse_response_length = 12, 9  # long candidates keep their last 10 tokens
    reward = translation.make_roundtrip_reward(reverse, tokenizer, reverse_prompt_length,
                                               reverse_response_length)
    # Any sources do (the back-translation reads only the candidate); these share characters
    # with what this untrained reverse model writes, so some rewards lie strictly between 0 and 1.
    sources = ["二千二百二十二", "九千五百七十一", "1957年6月29日", "1999年12月1日", pairs[4][0]]
    candidates = [pairs[0][1], "nine", "", "one thousand and ten and more words", pairs[4][1][:10]]
    references = ["", "", "", "", pairs[4][1]]  # unlabelled rows, then one labelled row
    packed = pack_pairs(tokenizer, list(zip(sources, candidates)), prompt_length, response_length, warn=False)
    refs = pack_pairs(tokenizer, list(zip(sources, references)), prompt_length, response_length, warn=False)
    got = reward(packed[:, :prompt_length], packed[:, prompt_length:], refs[:, prompt_length:]).numpy()

    back = ResponseGenerator(reverse, tokenizer, reverse_prompt_length, reverse_response_length)(candidates)
    expected = [sacrebleu.CHRF().sentence_score(b, [s]).score / 100 if c else 0.0
                for s, c, b in zip(sources, candidates, back)]
    expected[4] = sacrebleu.CHRF().sentence_score(candidates[4], [references[4]]).score / 100
    assert any(0 < e < 1 for e in expected[:4])  # the untrained model's back-translations score in between
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.filterwarnings("ignore:.*kept their last tokens")
def test_roundtrip_reward_exact_weight_pays_whole_matches():
    import numpy as np
    import sacrebleu

    from keras_selffb.generator import ResponseGenerator
    from keras_selffb.text import pack_pairs

    pairs, tokenizer, reverse = untrained_reverse_model(11)
    prompt_length, response_length = 14, 48
    back = ResponseGenerator(reverse, tokenizer, 12, 9)
    candidates = [pairs[0][1], pairs[1][1], "", pairs[2][1], pairs[3][1][:10]]
    backs = back(candidates)
    assert backs[0] and backs[1] != backs[0]
    # Row 0's source IS its candidate's back-translation: a whole round-trip match.
    sources = [backs[0], "九千五百七十一", "1999年12月1日", pairs[2][0], pairs[3][0]]
    references = ["", "", "", pairs[2][1], pairs[3][1]]  # rows 3 and 4 are labelled
    weight = 0.4
    reward = translation.make_roundtrip_reward(reverse, tokenizer, 12, 9, exact_weight=weight)
    packed = pack_pairs(tokenizer, list(zip(sources, candidates)), prompt_length, response_length, warn=False)
    refs = pack_pairs(tokenizer, list(zip(sources, references)), prompt_length, response_length, warn=False)
    got = reward(packed[:, :prompt_length], packed[:, prompt_length:], refs[:, prompt_length:]).numpy()

    def mixed(hypothesis, reference):
        chrf = sacrebleu.CHRF().sentence_score(hypothesis, [reference]).score / 100
        return (1 - weight) * chrf + weight * float(hypothesis == reference)

    expected = [mixed(backs[0], sources[0]), mixed(backs[1], sources[1]), 0.0,
                mixed(candidates[3], references[3]), mixed(candidates[4], references[4])]
    assert expected[0] == pytest.approx(1.0) and expected[3] == pytest.approx(1.0)
    assert expected[1] < 1 - weight and expected[4] < 1 - weight  # no exact term: at most 1 - w
    np.testing.assert_allclose(got, expected, atol=1e-5)
    with pytest.raises(ValueError, match="exact_weight"):
        translation.make_roundtrip_reward(reverse, tokenizer, 12, 9, exact_weight=1.5)


def test_paired_bootstrap_matches_sacrebleu_and_counts_sentences():
    import numpy as np
    import sacrebleu

    references = ["two thousand and five", "March 5, 2021", "nine hundred", "one", "forty-two"]
    before = ["two thousand and six", "March 5, 2021", "nine hundred and one", "one", "forty"]
    after = ["two thousand and five", "March 5, 2021", "nine hundred", "two", "forty"]
    boot = translation.paired_bootstrap(references, before, after, samples=300, seed=0)
    full = (sacrebleu.corpus_bleu(after, [references]).score
            - sacrebleu.corpus_bleu(before, [references]).score)
    assert boot["bleu_diff"] == pytest.approx(full, abs=0.006)
    assert boot["exact_diff"] == pytest.approx(100 * (3 / 5 - 2 / 5))
    assert boot["sentences_now_exact"] == 2 and boot["sentences_no_longer_exact"] == 1
    low, high = boot["bleu_diff_95"]
    assert low <= boot["bleu_diff"] <= high and low < high
    # Chinese targets: zh tokenization, as sacrebleu's corpus BLEU with tokenize="zh".
    zh_refs, zh_before, zh_after = ["三千零四十二", "二零二一"], ["三千零四十", "二零二一"], ["三千零四十二", "二零二"]
    zh = translation.paired_bootstrap(zh_refs, zh_before, zh_after, samples=50, seed=1)
    expected = (sacrebleu.corpus_bleu(zh_after, [zh_refs], tokenize="zh").score
                - sacrebleu.corpus_bleu(zh_before, [zh_refs], tokenize="zh").score)
    assert zh["bleu_diff"] == pytest.approx(expected, abs=0.006)
    # The same system twice: every resample differs by exactly 0.
    same = translation.paired_bootstrap(references, before, before, samples=100, seed=2)
    assert same["bleu_diff_95"] == [0.0, 0.0] and same["exact_diff_95"] == [0.0, 0.0]
    assert np.isfinite(boot["exact_diff_95"]).all()


@pytest.mark.filterwarnings("ignore:.*kept their last tokens")
def test_roundtrip_stage_warns_about_a_back_translator_that_did_not_learn(tmp_path, capsys):
    import argparse

    import keras

    from keras_selffb.generator import ResponseGenerator
    from keras_selffb.models import PolicyNetwork
    from keras_selffb.text import CharTokenizer

    splits = {k: translation.orient(v, "zh-en") for k, v in translation.synthetic_pairs(seed=0).items()}
    splits = {"train": splits["train"][:64], "dev": splits["dev"][:32], "test": splits["test"][:32]}
    tokenizer = CharTokenizer.train([t for pairs in splits.values() for pair in pairs for t in pair])
    prompt_length = max(len(s) for pairs in splits.values() for s, _ in pairs) + 2
    response_length = max(len(t) for pairs in splits.values() for _, t in pairs) + 1
    keras.utils.set_random_seed(0)
    forward = PolicyNetwork(tokenizer.vocabulary_size, embedding_dim=8, hidden_dim=8)
    generator = ResponseGenerator(forward, tokenizer, prompt_length, response_length)
    # One epoch of a tiny reverse model: it cannot have learned to back-translate.
    args = argparse.Namespace(seed=0, hidden=8, reverse_mle_epochs=1, mle_epochs=1, patience=3, min_mle_epochs=0,
                              output=str(tmp_path), data_seed=0, unlabelled=20, train_numbers=600,
                              train_dates=150, mix_labelled=False, exact_weight=0.5)
    _, rl_pairs, record = translation.roundtrip_stage(args, tokenizer, forward, generator, splits,
                                                      prompt_length, response_length)
    out = capsys.readouterr().out
    assert record["roundtrip"]["reverse_dev"]["chrf"] < translation.REVERSE_CHRF_WARNING
    assert "WARNING: the back-translator scores chrF" in out and "--min-mle-epochs" in out
    assert len(rl_pairs) == 20 and all(reference == "" for _, reference in rl_pairs)
