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

from keras_selffb.metrics import corpus_bleu, perplexity_statistics, rouge_l
from keras_selffb.models import ResponseGenerator, response_token_nll
from keras_selffb.text import PAD_ID, detokenize_texts, pack_pairs

# What `score_replies` can compute from strings alone.
TEXT_METRICS = ("rouge_l", "bleu")

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
        replies.extend(detokenize_texts(tokenizer, ids))
    return replies


def reference_statistics(policy, rows, prompt_length, row_weights=None):
    """Summed token NLL of packed references and their token count; graph-friendly.

    Args:
        policy: a `PolicyNetwork`.
        rows: int32 `(B, P + R)` packed `(prompt, reference)` rows.
        prompt_length: int. Prompt columns `P`.
        row_weights: optional float `(B,)`. 0 drops a row (padding rows
            added to split a batch evenly over replicas). Defaults to `None`.

    Returns:
        `(nll_sum, token_count)`, float32 scalars (EOS counted, PAD not).
    """
    references = rows[:, prompt_length:]
    _, _, logits = response_token_nll(policy, rows[:, :prompt_length], references)
    mask = None if row_weights is None else tf.cast(row_weights, tf.float32)[:, None]
    return perplexity_statistics(logits, references, mask=mask, pad_id=PAD_ID)


def reference_perplexity(policy, packed, prompt_length, batch_size=64):
    """Token-weighted perplexity of the packed references under `policy`."""
    total, count = 0.0, 0.0
    for start in range(0, len(packed), batch_size):
        nll, tokens = reference_statistics(policy, tf.constant(packed[start : start + batch_size]), prompt_length)
        total += float(nll)
        count += float(tokens)
    return float(np.exp(total / max(count, 1.0)))


def score_replies(references, replies, metrics=TEXT_METRICS):
    """Mean ROUGE-L F1 (`cjk` segmentation) and corpus BLEU of `replies`.

    Args:
        references: list of str.
        replies: list of str, one per reference.
        metrics: names among `"rouge_l"` and `"bleu"`. Defaults to both.

    Returns:
        dict name -> float (`bleu` on the 0-100 scale).
    """
    unknown = set(metrics) - set(TEXT_METRICS)
    if unknown:
        raise ValueError(f"Unknown text metric(s) {sorted(unknown)}; choose from {TEXT_METRICS}.")
    scores = {}
    if "rouge_l" in metrics:
        scores["rouge_l"] = float(tf.reduce_mean(rouge_l(references, replies, tokenize="cjk").fmeasure))
    if "bleu" in metrics:
        scores["bleu"] = float(corpus_bleu(references, replies, tokenize=bleu_tokenization(references)).score)
    return scores


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
        **score_replies(references, replies),
        "perplexity": reference_perplexity(policy, packed, prompt_length, batch_size),
        "replies": replies,
    }
