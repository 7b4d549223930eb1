"""Graph behaviour of the metrics: tf.function with unknown shapes, masks
and padding sides, hashing, and the errors users see."""

import numpy as np
import pytest
import sacrebleu
import tensorflow as tf
from rouge_score import rouge_scorer

from keras_selffb import metrics
from keras_selffb.text import segmentation

REFS = ["The cat sat on the mat.", "我爱北京天安门", "a b c d e", "", "x y"]
HYPS = ["the cat is on a mat", "我爱北京", "e d c b a", "word", ""]
STRINGS = tf.TensorSpec([None], tf.string)


def test_string_forms_in_tf_function_with_unknown_batch():
    @tf.function(input_signature=[STRINGS, STRINGS])
    def score(refs, hyps):
        return (metrics.rouge_l(refs, hyps, tokenize="cjk").fmeasure,
                metrics.sentence_bleu(refs, hyps, tokenize="zh").score,
                metrics.corpus_bleu(refs, hyps).score)

    rouge, bleu, corpus = score(tf.constant(REFS), tf.constant(HYPS))
    np.testing.assert_allclose(
        rouge.numpy(), metrics.rouge_l(REFS, HYPS, tokenize="cjk").fmeasure, atol=0)
    np.testing.assert_allclose(
        bleu.numpy(),
        [sacrebleu.sentence_bleu(h, [r], tokenize="zh").score
         for r, h in zip(REFS, HYPS)], atol=1e-4)
    assert float(corpus) == pytest.approx(
        sacrebleu.corpus_bleu(HYPS, [REFS]).score, abs=1e-4)


def test_id_forms_with_masks_and_any_padding_side():
    rng = np.random.default_rng(0)
    ref = rng.integers(1, 5, size=(64, 9))
    hyp = rng.integers(1, 5, size=(64, 11))
    ref_len = rng.integers(0, 10, size=64)
    hyp_len = rng.integers(0, 12, size=64)
    right = (np.where(np.arange(9) < ref_len[:, None], ref, 0),
             np.where(np.arange(11) < hyp_len[:, None], hyp, 0))
    # Left padding: the same tokens right-aligned.
    left_ref = np.zeros_like(right[0])
    left_hyp = np.zeros_like(right[1])
    for i in range(64):
        left_ref[i, 9 - ref_len[i]:] = right[0][i, :ref_len[i]]
        left_hyp[i, 11 - hyp_len[i]:] = right[1][i, :hyp_len[i]]
    # An explicit mask with a padding id that is also a real token (0).
    masked_ref = np.where(right[0] > 0, right[0] - 1, 7)
    masked_hyp = np.where(right[1] > 0, right[1] - 1, 7)
    scorer = rouge_scorer.RougeScorer(["rougeL", "rouge1"])
    words = [(" ".join(f"w{t}" for t in r if t), " ".join(f"w{t}" for t in h if t))
             for r, h in zip(*right)]
    want_l = [scorer.score(r, h)["rougeL"].fmeasure for r, h in words]
    want_1 = [scorer.score(r, h)["rouge1"].fmeasure for r, h in words]
    for ref_ids, hyp_ids, kwargs in [
            (right[0], right[1], {}),
            (left_ref, left_hyp, {}),
            (masked_ref, masked_hyp,
             {"ref_mask": right[0] > 0, "hyp_mask": right[1] > 0})]:
        np.testing.assert_allclose(
            metrics.rouge_l_ids(ref_ids, hyp_ids, **kwargs).fmeasure, want_l,
            atol=1e-6)
        np.testing.assert_allclose(
            metrics.rouge_n_ids(ref_ids, hyp_ids, n=1, **kwargs).fmeasure,
            want_1, atol=1e-6)


def test_id_forms_compile_with_unknown_shapes_under_xla():
    ids = tf.TensorSpec([None, None], tf.int32)

    @tf.function(jit_compile=True, input_signature=[ids, ids])
    def score(ref, hyp):
        return (metrics.rouge_l_ids(ref, hyp).fmeasure,
                metrics.sentence_bleu_ids(ref, hyp).score,
                metrics.distinct_n(hyp, n=2, per_example=True))

    ref = [[5, 6, 7, 8, 0, 0] + [9] * 200]  # > 62 tokens: several words
    hyp = [[5, 7, 8, 9, 9, 0]]
    rouge, bleu, distinct = score(tf.constant(ref), tf.constant(hyp))
    ref_text = "w5 w6 w7 w8 " + " ".join(["w9"] * 200)
    want = rouge_scorer.RougeScorer(["rougeL"]).score(ref_text, "w5 w7 w8 w9 w9")
    assert float(rouge[0]) == pytest.approx(want["rougeL"].fmeasure, abs=1e-6)
    assert float(bleu[0]) == pytest.approx(sacrebleu.sentence_bleu(
        "w5 w7 w8 w9 w9", [ref_text], tokenize="none").score, abs=1e-4)
    assert float(distinct[0]) == pytest.approx(1.0)  # 4 distinct bigrams of 4


def test_hash_tokens_is_deterministic_and_collision_free_on_a_vocabulary():
    words = tf.constant([f"word{i}" for i in range(20000)] + ["word7"])
    ids = segmentation.hash_tokens(words).numpy()
    assert ids.min() >= 1 and ids.max() < 2**62
    assert len(set(ids[:-1].tolist())) == 20000 and ids[-1] == ids[7]


def test_segmenter_accepts_a_callable():
    def by_comma(texts):
        return tf.strings.split(texts, sep=",")

    score = metrics.rouge_l(["a,b,c"], ["a,c"], tokenize=by_comma)
    assert float(score.recall[0]) == pytest.approx(2 / 3)


@pytest.mark.parametrize("call, error, words", [
    (lambda: metrics.rouge_l([1, 2], [3, 4]), TypeError, "strings"),
    (lambda: metrics.rouge_l(tf.constant([1]), tf.constant([2])), TypeError,
     "tf.string"),
    (lambda: metrics.rouge_l_ids([[1.0]], [[2.0]]), TypeError, "integer"),
    (lambda: metrics.bleu_statistics_ids(tf.constant([["a"]]), [[1]]),
     TypeError, "integer"),
    (lambda: metrics.rouge_l(["a", "b"], ["a"]), ValueError, "batch size"),
    (lambda: metrics.rouge_l_ids([[1], [2]], [[1]]), ValueError, "batch size"),
    (lambda: metrics.corpus_bleu(["a"], ["a"], tokenize="13b"), ValueError,
     "'13a'"),
    (lambda: metrics.rouge_l(["a"], ["a"], tokenize="spaces"), ValueError,
     "'cjk'"),
    (lambda: metrics.sentence_bleu(["a"], ["a"], smooth_method="add-one"),
     ValueError, "'add-k'"),
    (lambda: metrics.rouge_n(["a"], ["a"], n=0), ValueError, "positive"),
    (lambda: metrics.rouge_l_ids([1, 2], [1, 2]), ValueError, "[batch, length]"),
    (lambda: metrics.rouge_l_ids([[1, 2]], [[1]], ref_mask=[[True]]), ValueError,
     "`ref_mask`"),
    (lambda: metrics.perplexity([[1.0]], [[1]]), ValueError, "one more axis"),
    (lambda: metrics.Bleu(smooth_method="nope"), ValueError, "smooth_method"),
])
def test_errors_are_clear_and_raised_in_python(call, error, words):
    with pytest.raises(error) as info:
        call()
    assert words in str(info.value)


def test_dynamic_batch_mismatch_fails_with_a_clear_message():
    @tf.function(input_signature=[STRINGS, STRINGS])
    def score(refs, hyps):
        return metrics.rouge_l(refs, hyps).fmeasure

    with pytest.raises(tf.errors.InvalidArgumentError, match="same batch size"):
        score(tf.constant(["a", "b"]), tf.constant(["a"]))
