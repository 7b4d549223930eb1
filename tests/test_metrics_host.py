"""The host (numpy) path of the eager string BLEU functions.

`segmentation.host_segment`, `_inputs.host_token_ids` and
`_ngrams.host_ngram_counts` are checked against sacrebleu's own tokenizers
and scores, and against the in-graph path, on adversarial text.
"""

import itertools
import random
import string

import numpy as np
import pytest
import sacrebleu
import tensorflow as tf
from sacrebleu.metrics import BLEU
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from keras_selffb import metrics
from keras_selffb.metrics import _inputs, _ngrams
from keras_selffb.text import segmentation

# Python's str.isspace() outside ASCII, and look-alikes that are not spaces.
UNICODE_SPACES = ["\x85", "\xa0", "\u1680", *map(chr, range(0x2000, 0x200B)),
                  "\u2028", "\u2029", "\u202f", "\u205f", "\u3000"]
NOT_SPACES = ["\u200b", "\u180e", "\ufeff", "\u2060", "\u0301"]
PIECES = (
    list(string.printable)  # every ASCII punctuation, digit and space
    + ["\x1c", "\x1d", "\x1e", "\x1f", "\x0b", "\x0c"]
    + [".", ",", "-", "..", ",.", "...", "1", "22", "3.14", "1,000", "2-3",
       "-1", "a.", ".a", "1.", ".1", "e.g.", "U.S.", "1..2", "1...2", "..5"]
    + ["&quot;", "&amp;", "&lt;", "&gt;", "&amp;quot;", "&amp;lt;", "&",
       "<skipped>", "<skip", "-\n", "\n", "\r\n", "\t"]
    + UNICODE_SPACES + NOT_SPACES
    + ["“", "”", "‘", "’", "—", "–", "…", "«", "»", "。", "，", "、", "！"]
    + ["café", "naïve", "İstanbul", "ΣΑΣ", "straße", "Ǆ", "ﬁ"]
    + ["世界", "你好", "日本語", "한국어", "ｆｕｌｌ", "😀", "𠀋", "\U0010fffd"]
    + ["word", "Word", "WORD", "the", "a", "supercalifragilistic",
       "supercalifragilisticexpialidocious", "abcdefg", "abcdefgh",
       "abcdefghijk", "abcdefghijkl", "abcdefghijklmno", "abcdefghijklmnop"]
)


def _texts(seed, count, max_pieces=14):
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        pieces = [rng.choice(PIECES) for _ in range(rng.randint(0, max_pieces))]
        glue = rng.choice(["", " ", " ", "  "])
        texts.append(glue.join(pieces))
    return texts


def _tokens(texts, method):
    """Tokens of each text from `host_segment`, as str."""
    data, starts, lengths, row_splits = segmentation.host_segment(texts, method)
    raw = data.tobytes()
    words = [raw[s:s + n].decode() for s, n in zip(starts, lengths)]
    return [words[a:b] for a, b in zip(row_splits[:-1], row_splits[1:])]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_host_13a_equals_sacrebleu_tokenizer13a(seed):
    texts = [t.rstrip() for t in _texts(seed, 3000)]
    tokenizer = Tokenizer13a()
    want = [tokenizer(t).split() for t in texts]
    assert _tokens(texts, "13a") == want


def test_host_13a_on_every_short_string_of_dots_digits_and_dashes():
    # Every string of up to 5 characters over the rules' classes: the
    # interplay of the four TokenizerRegexp rules, exhaustively.
    alphabet = "1.,-a (é"
    texts = ["".join(chars) for size in range(6)
             for chars in itertools.product(alphabet, repeat=size)]
    tokenizer = Tokenizer13a()
    want = [tokenizer(t).split() for t in texts]
    assert len(texts) == sum(8**k for k in range(6))
    assert _tokens(texts, "13a") == want


def test_host_none_splits_on_python_whitespace():
    texts = _texts(5, 2000)
    assert _tokens(texts, "none") == [t.split() for t in texts]


def test_host_segment_declines_nul_and_lone_surrogates():
    assert segmentation.host_segment(["a\x00b", "c"], "13a") is None
    assert segmentation.host_segment(["a\ud800b"], "13a") is None
    assert segmentation.host_segment([], "none")[3].tolist() == [0]


def test_host_token_ids_are_equal_exactly_for_equal_bytes():
    rng = random.Random(3)
    # Shared prefixes across the 7-byte and 4-byte key rounds, multi-byte
    # characters, and tokens that differ only in their last byte.
    stems = ["abcdefg", "abcdefgh", "abcdefghijk", "ab", "é", "世界世界世",
             "abcdefghijkl", "abcdefghijklm", "x" * 40]
    words = [rng.choice(stems) + rng.choice(["", "z", "é", "zz", "abcd", "😀"])
             for _ in range(5000)]
    texts = [" ".join(words[i:i + 50]) for i in range(0, 5000, 50)]
    data, starts, lengths, _ = segmentation.host_segment(texts, "none")
    ids = _inputs.host_token_ids(data, starts, lengths)
    raw = data.tobytes()
    tokens = [raw[s:s + n] for s, n in zip(starts, lengths)]
    assert tokens == [w.encode() for w in words]
    first_id = {}
    for token, token_id in zip(tokens, ids.tolist()):
        assert first_id.setdefault(token, token_id) == token_id
    assert len(set(first_id.values())) == len(first_id)
    assert ids.min() >= 1


def _graph_counts(ids, row_splits, max_order):
    """The in-graph kernel on the same ids (padded rows)."""
    ragged = tf.RaggedTensor.from_row_splits(ids, row_splits)
    ref, hyp = ragged[0::2], ragged[1::2]
    matches, hyp_totals, ref_totals = _ngrams.ngram_counts(
        ref.to_tensor(0), tf.cast(ref.row_lengths(), tf.int32),
        hyp.to_tensor(0), tf.cast(hyp.row_lengths(), tf.int32), max_order)
    return matches.numpy(), hyp_totals.numpy(), ref_totals.numpy()


@pytest.mark.parametrize("max_order", [1, 2, 4, 6])
@pytest.mark.parametrize("vocab", [3, 40, 2**20])
def test_host_ngram_counts_equal_the_graph_kernel(max_order, vocab):
    rng = np.random.default_rng(max_order * 7 + vocab)
    lengths = rng.integers(0, 12, size=2 * 300)
    lengths[:20] = 0  # empty rows, empty pairs
    ids = rng.integers(1, vocab + 1, size=int(lengths.sum()))
    row_splits = np.concatenate([[0], np.cumsum(lengths)])
    got = _ngrams.host_ngram_counts(ids, row_splits, max_order)
    want = _graph_counts(ids, row_splits, max_order)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_host_ngram_counts_decline_pairs_too_long_for_the_digits():
    row_splits = np.array([0, 2, 4])  # max_order 31: digits of 2 bits
    assert _ngrams.host_ngram_counts(np.array([1, 2, 1, 2]), row_splits, 31) is None


SMOOTHINGS = ["exp", "floor", "add-k", "none"]


@pytest.mark.parametrize("tokenize", ["13a", "none"])
def test_host_bleu_equals_sacrebleu_on_adversarial_text(tokenize):
    refs = _texts(10, 600)
    hyps = [" ".join(t.split()[::-1][:8]) + r for t, r in zip(refs, _texts(11, 600, 4))]
    for lowercase in (False, True):
        for smooth in SMOOTHINGS[lowercase::2]:
            want = sacrebleu.corpus_bleu(hyps, [refs], tokenize=tokenize,
                                         smooth_method=smooth,
                                         lowercase=lowercase, force=True)
            got = metrics.corpus_bleu(refs, hyps, tokenize=tokenize,
                                      smooth_method=smooth, lowercase=lowercase)
            assert float(got.score) == pytest.approx(want.score, abs=1e-9)
            np.testing.assert_allclose(got.precisions.numpy(), want.precisions,
                                       atol=1e-9)
        want = [sacrebleu.sentence_bleu(h, [r], tokenize=tokenize,
                                        lowercase=lowercase).score
                for r, h in zip(refs, hyps)]
        got = metrics.sentence_bleu(refs, hyps, tokenize=tokenize,
                                    lowercase=lowercase)
        np.testing.assert_allclose(got.score.numpy(), want, atol=1e-9, rtol=0)
    for order, effective in ((2, False), (6, True)):
        bleu = BLEU(max_ngram_order=order, effective_order=effective,
                    tokenize=tokenize)
        want = [bleu.sentence_score(h, [r]).score for r, h in zip(refs, hyps)]
        got = metrics.sentence_bleu(refs, hyps, tokenize=tokenize,
                                    max_order=order,
                                    use_effective_order=effective)
        np.testing.assert_allclose(got.score.numpy(), want, atol=1e-9, rtol=0)


def test_host_statistics_equal_the_graph_path():
    refs, hyps = _texts(20, 800), _texts(21, 800)
    host = metrics.bleu_statistics(refs, hyps)
    graph = tf.function(metrics.bleu_statistics)(tf.constant(refs),
                                                 tf.constant(hyps))
    for h, g in zip(host, graph):
        assert h.dtype == g.dtype == tf.int32
        np.testing.assert_array_equal(h.numpy(), g.numpy())


def test_host_path_with_a_huge_vocabulary_ranks_ids_per_pair():
    # 40,000 distinct tokens: more than 15-bit digits hold.
    rng = random.Random(4)
    refs = [" ".join(f"t{rng.randrange(10**6)}" for _ in range(20))
            for _ in range(2000)]
    hyps = [" ".join(w if rng.random() < 0.7 else "x" for w in r.split())
            for r in refs]
    want = sacrebleu.corpus_bleu(hyps, [refs], force=True)
    got = metrics.corpus_bleu(refs, hyps)
    assert list(metrics.bleu_statistics(refs, hyps).total().matches.numpy()) == want.counts
    assert float(got.score) == pytest.approx(want.score, abs=1e-9)


def test_inputs_the_host_path_leaves_to_the_graph_score_like_sacrebleu():
    refs, hyps = ["a\x00b c d", "x y"], ["a\x00b c", "x y z"]
    want = sacrebleu.corpus_bleu(hyps, [refs], force=True).score
    assert float(metrics.corpus_bleu(refs, hyps).score) == pytest.approx(want, abs=1e-4)
    assert float(metrics.corpus_bleu(tuple(refs[1:]), "x y z").score) == pytest.approx(
        sacrebleu.corpus_bleu(["x y z"], [["x y"]]).score, abs=1e-9)
    with pytest.raises(ValueError, match="same batch size"):
        metrics.sentence_bleu(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="must contain strings"):
        metrics.corpus_bleu(["a", 3], ["a", "b"])
