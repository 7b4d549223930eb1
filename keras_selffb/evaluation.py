"""Evaluation of a policy on held-out pairs: ROUGE-L, BLEU and perplexity.

One path: `ResponseGenerator.evaluate` (keras_selffb/generator.py). Replies
are generated greedily (deterministic), then scored against the reference
strings with the in-graph metrics:

- `rouge_l`: mean ROUGE-L F1 with the CJK-aware segmentation (Chinese per
  character, other scripts as lowercased words; see docs/metrics.md);
- `bleu`: corpus BLEU (sacrebleu's formula, smoothing "exp"), tokenization
  `13a`, or `zh` when the references contain Chinese;
- `perplexity`: per-token perplexity of the references (EOS included) under
  the policy, teacher-forced.
"""

from keras_selffb.generator import (  # noqa: F401 - re-exported
    TEXT_METRICS,
    ResponseGenerator,
    bleu_tokenization,
    score_replies,
)


def evaluate_policy(policy, tokenizer, pairs, prompt_length, response_length, batch_size=64):
    """ROUGE-L, BLEU and perplexity of `policy` on `(prompt, reference)` pairs.

    Shorthand for `ResponseGenerator(policy, tokenizer, prompt_length,
    response_length, batch_size=batch_size).evaluate(pairs)`.

    Returns:
        dict with `rouge_l`, `bleu` (0-100), `perplexity`, `replies` and
        `reply_ids`.
    """
    if not pairs:
        raise ValueError("Cannot evaluate on an empty set of pairs.")
    generator = ResponseGenerator(policy, tokenizer, prompt_length, response_length, batch_size=batch_size)
    return generator.evaluate(pairs)
