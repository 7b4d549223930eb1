"""Evaluation of a policy on held-out pairs: ROUGE-L, BLEU and perplexity.

Replies are generated greedily (deterministic), then scored against the
reference strings with the in-graph metrics:

- `rouge_l`: mean ROUGE-L F1 with the CJK-aware segmentation (Chinese per
  character, other scripts as lowercased words; see docs/metrics.md);
- `bleu`: corpus BLEU (sacrebleu's formula, smoothing "exp"), tokenization
  `13a`, or `zh` when the references contain Chinese;
- `perplexity`: per-token perplexity of the references (EOS included) under
  the policy, teacher-forced.
"""

import re

import numpy as np
import tensorflow as tf

from keras_selffb.metrics import corpus_bleu, rouge_l
from keras_selffb.models import ResponseGenerator, response_token_nll
from keras_selffb.text import pack_pairs

_HAN = re.compile(r"[\u4e00-\u9fff]")


def bleu_tokenization(texts):
    """`"zh"` if any text has a Han character, else `"13a"` (sacrebleu's choice)."""
    return "zh" if any(_HAN.search(t) for t in texts) else "13a"


def generate_replies(policy, tokenizer, prompts, prompt_length, max_new_tokens, batch_size=64, generator=None):
    """Greedy replies to `prompts`, in batches; a list of str."""
    generator = generator or ResponseGenerator(policy, tokenizer, prompt_length, max_new_tokens)
    replies = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        _, ids, _ = generator.generate_ids(chunk)
        replies.extend(t.decode("utf-8") for t in tokenizer.detokenize(ids).numpy())
    return replies


def reference_perplexity(policy, packed, prompt_length, batch_size=64):
    """Token-weighted perplexity of the packed references under `policy`."""
    total, count = 0.0, 0.0
    for start in range(0, len(packed), batch_size):
        rows = tf.constant(packed[start : start + batch_size])
        nll, mask, _ = response_token_nll(policy, rows[:, :prompt_length], rows[:, prompt_length:])
        total += float(tf.reduce_sum(nll))
        count += float(tf.reduce_sum(mask))
    return float(np.exp(total / max(count, 1.0)))


def evaluate_policy(policy, tokenizer, pairs, prompt_length, response_length, batch_size=64):
    """ROUGE-L, BLEU and perplexity of `policy` on `(prompt, reference)` pairs.

    Returns:
        dict with `rouge_l`, `bleu` (0-100), `perplexity` and `replies`.
    """
    if not pairs:
        raise ValueError("Cannot evaluate on an empty set of pairs.")
    prompts = [p for p, _ in pairs]
    references = [r for _, r in pairs]
    replies = generate_replies(policy, tokenizer, prompts, prompt_length, response_length, batch_size)
    packed = pack_pairs(tokenizer, pairs, prompt_length, response_length, warn=False)
    return {
        "rouge_l": float(tf.reduce_mean(rouge_l(references, replies, tokenize="cjk").fmeasure)),
        "bleu": float(corpus_bleu(references, replies, tokenize=bleu_tokenization(references)).score),
        "perplexity": reference_perplexity(policy, packed, prompt_length, batch_size),
        "replies": replies,
    }
