"""Throughput of our in-graph ROUGE-L and BLEU against the usual references.

Run: `python benchmarks/metrics.py [--pairs 4096] [--out runs/metrics_benchmark.png]`
or, for the metrics as a user calls them:
`python benchmarks/metrics.py --user-calls [--pairs 3000] [--repeats 7]`

Scores the same seeded pairs (4,096 by default, 20-60 whitespace words
each, hypotheses are edited copies of the references) with:

- ours: `rouge_l` and `corpus_bleu` / `sentence_bleu` on strings inside a
  plain `tf.function`, and the id forms `rouge_l_ids` /
  `sentence_bleu_ids` under `tf.function(jit_compile=True)` (ids prepared
  beforehand, as a reward sees them during training);
- rouge-score (`RougeScorer(["rougeL"])`), sacrebleu (`corpus_bleu`, and
  `sentence_bleu` in a loop), nltk (`corpus_bleu`, `sentence_bleu` in a
  loop, `str.split` tokens), keras-hub `RougeL` / `Bleu` (eager).

Each timing is the best of `--repeats` runs after one warm-up (tracing and
XLA compilation excluded); sacrebleu's tokenizer caches are cleared before
every run; keras-hub runs once (it is very slow). Prints a table of pairs
per second and ours/reference ratios, and writes a bar chart (matplotlib,
Agg backend). Not part of the tests.

`--user-calls` times `keras_selffb.metrics.rouge_l(refs, hyps)`,
`corpus_bleu` and `sentence_bleu` exactly as a user calls them: Python
lists of str, eager, default settings, the first call excluded; each repeat
runs ours and then its reference (rouge-score `RougeScorer(["rougeL"])` in
a loop, `sacrebleu.corpus_bleu`, `sacrebleu.sentence_bleu` in a loop) on
the same pairs, so both see the same machine load. As `timeit` does, the
garbage collector runs before and is off during each timed call, so neither
side pays for the other's garbage. It prints best and median seconds and
the ratio reference / ours (of the bests), then the first call at a new
batch size (`--pairs` * 2 // 5 pairs), which would include any retrace.
"""

import argparse
import gc
import os
import random
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_selffb import metrics  # noqa: E402

WORDS = ("the a of and to in is was it that he she they we you cat dog mat sat "
         "on house river model data train test good bad small large red blue "
         "green Paris London 2024 3.14 café naïve").split()
PUNCT = [",", ".", "!", "?", ";", "(", ")", "\"", "'s", "-"]


def make_pairs(count, seed=0):
    """Seeded (references, hypotheses), 20-60 words, hypotheses edited."""
    rng = random.Random(seed)
    refs, hyps = [], []
    for _ in range(count):
        words = [rng.choice(WORDS) if rng.random() > 0.12 else rng.choice(PUNCT)
                 for _ in range(rng.randint(20, 60))]
        edited = []
        for word in words:
            draw = rng.random()
            if draw < 0.1:
                continue  # deletion
            edited.append(rng.choice(WORDS) if draw < 0.25 else word)
            if draw > 0.95:
                edited.append(rng.choice(WORDS))  # insertion
        refs.append(" ".join(words))
        hyps.append(" ".join(edited))
    return refs, hyps


def to_ids(texts, vocab, width=64):
    """Whitespace words to padded int32 ids (0 = padding)."""
    out = np.zeros((len(texts), width), np.int32)
    for row, text in enumerate(texts):
        ids = [vocab.setdefault(w, len(vocab) + 1) for w in text.split()][:width]
        out[row, :len(ids)] = ids
    return out


def best_time(fn, repeats, warmup=True, before=None):
    """Minimum wall time of `fn` over `repeats` runs."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def clear_sacrebleu_caches():
    """sacrebleu memoises tokenized lines: clear it for honest timings."""
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
    from sacrebleu.tokenizers.tokenizer_re import TokenizerRegexp

    Tokenizer13a.__call__.cache_clear()
    TokenizerRegexp.__call__.cache_clear()


def run(pairs, repeats):
    """Time every implementation; return {name: seconds}."""
    import keras_hub
    import sacrebleu
    from nltk.translate import bleu_score
    from rouge_score import rouge_scorer

    refs, hyps = make_pairs(pairs)
    ref_t, hyp_t = tf.constant(refs), tf.constant(hyps)
    vocab = {}
    ref_ids = tf.constant(to_ids(refs, vocab))
    hyp_ids = tf.constant(to_ids(hyps, vocab))
    ours_rouge = tf.function(lambda r, h: metrics.rouge_l(r, h).fmeasure)
    ours_corpus = tf.function(lambda r, h: metrics.corpus_bleu(r, h).score)
    ours_sentence = tf.function(lambda r, h: metrics.sentence_bleu(r, h).score)
    def ids_rouge(r, h):
        return metrics.rouge_l_ids(r, h).fmeasure

    def ids_bleu(r, h):
        return metrics.sentence_bleu_ids(r, h).score

    graph_rouge, graph_bleu = tf.function(ids_rouge), tf.function(ids_bleu)
    xla_rouge = tf.function(ids_rouge, jit_compile=True)
    xla_bleu = tf.function(ids_bleu, jit_compile=True)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    smooth = bleu_score.SmoothingFunction().method3  # NIST "exp" smoothing
    ref_tok = [[r.split()] for r in refs]
    hyp_tok = [h.split() for h in hyps]
    slow = max(1, repeats // 2)
    timings = {
        "ROUGE-L ours (strings, tf.function)":
            best_time(lambda: ours_rouge(ref_t, hyp_t).numpy(), repeats),
        "ROUGE-L ours (ids, tf.function)":
            best_time(lambda: graph_rouge(ref_ids, hyp_ids).numpy(), repeats),
        "ROUGE-L ours (ids, XLA)":
            best_time(lambda: xla_rouge(ref_ids, hyp_ids).numpy(), repeats),
        "ROUGE-L rouge-score":
            best_time(lambda: [scorer.score(r, h) for r, h in zip(refs, hyps)],
                      slow, warmup=False),
        "ROUGE-L keras-hub (eager)":
            best_time(lambda: keras_hub.metrics.RougeL().update_state(refs, hyps),
                      1, warmup=False),  # very slow: one run
        "BLEU ours corpus (strings, tf.function)":
            best_time(lambda: ours_corpus(ref_t, hyp_t).numpy(), repeats),
        "BLEU ours sentence (strings, tf.function)":
            best_time(lambda: ours_sentence(ref_t, hyp_t).numpy(), repeats),
        "BLEU ours sentence (ids, tf.function)":
            best_time(lambda: graph_bleu(ref_ids, hyp_ids).numpy(), repeats),
        "BLEU ours sentence (ids, XLA)":
            best_time(lambda: xla_bleu(ref_ids, hyp_ids).numpy(), repeats),
        "BLEU sacrebleu corpus":
            best_time(lambda: sacrebleu.corpus_bleu(hyps, [refs], force=True),
                      slow, before=clear_sacrebleu_caches),
        "BLEU sacrebleu sentence (loop)":
            best_time(lambda: [sacrebleu.sentence_bleu(h, [r])
                               for r, h in zip(refs, hyps)],
                      slow, before=clear_sacrebleu_caches),
        "BLEU nltk corpus":
            best_time(lambda: bleu_score.corpus_bleu(ref_tok, hyp_tok), slow,
                      warmup=False),
        "BLEU nltk sentence (loop)":
            best_time(lambda: [bleu_score.sentence_bleu(r, h, smoothing_function=smooth)
                               for r, h in zip(ref_tok, hyp_tok)], slow,
                      warmup=False),
        "BLEU keras-hub (eager)":
            best_time(lambda: keras_hub.metrics.Bleu().update_state(refs, hyps),
                      1, warmup=False),
    }
    return timings


RATIOS = [
    ("ROUGE-L ours (strings, tf.function)", "ROUGE-L rouge-score"),
    ("ROUGE-L ours (strings, tf.function)", "ROUGE-L keras-hub (eager)"),
    ("ROUGE-L ours (ids, XLA)", "ROUGE-L rouge-score"),
    ("BLEU ours corpus (strings, tf.function)", "BLEU sacrebleu corpus"),
    ("BLEU ours corpus (strings, tf.function)", "BLEU nltk corpus"),
    ("BLEU ours corpus (strings, tf.function)", "BLEU keras-hub (eager)"),
    ("BLEU ours sentence (strings, tf.function)", "BLEU sacrebleu sentence (loop)"),
    ("BLEU ours sentence (strings, tf.function)", "BLEU nltk sentence (loop)"),
    ("BLEU ours sentence (ids, XLA)", "BLEU sacrebleu sentence (loop)"),
]


def report(timings, pairs, out):
    """Print the table and ratios; save the bar chart; return the path."""
    rates = {name: pairs / seconds for name, seconds in timings.items()}
    print(f"\n{pairs} pairs, 20-60 words each; best of several runs, CPU "
          f"({os.cpu_count()} cores)\n")
    print(f"{'implementation':45s} {'seconds':>9s} {'pairs/s':>11s}")
    for name, seconds in timings.items():
        print(f"{name:45s} {seconds:9.3f} {rates[name]:11,.0f}")
    print(f"\n{'ours vs reference':80s} {'speed-up':>8s}")
    for ours, ref in RATIOS:
        print(f"{ours + '  vs  ' + ref:80s} {rates[ours] / rates[ref]:7.1f}x")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 6))
    names = list(rates)
    colors = ["tab:blue" if "ours" in n else "tab:gray" for n in names]
    ax.barh(names[::-1], [rates[n] for n in names][::-1], color=colors[::-1])
    ax.set_xscale("log")
    ax.set_xlabel("pairs per second (log scale, higher is better)")
    ax.set_title(f"Text metrics on {pairs} pairs (CPU); blue = keras-selffb")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"\nbar chart: {os.path.abspath(out)}")
    return out


def _timed(fn, *args):
    """Wall time of one call, garbage collected before and off during it."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        fn(*args)
        return time.perf_counter() - start
    finally:
        gc.enable()


def user_calls(pairs, repeats):
    """Eager calls on Python lists, first call excluded; print the table."""
    import sacrebleu
    from rouge_score import rouge_scorer

    refs, hyps = make_pairs(pairs)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    cases = [
        ("rouge_l", lambda r, h: metrics.rouge_l(r, h).fmeasure.numpy(),
         "rouge-score RougeScorer(['rougeL']) loop",
         lambda r, h: [scorer.score(a, b) for a, b in zip(r, h)]),
        ("corpus_bleu", lambda r, h: metrics.corpus_bleu(r, h).score.numpy(),
         "sacrebleu.corpus_bleu",
         lambda r, h: sacrebleu.corpus_bleu(h, [r], force=True)),
        ("sentence_bleu", lambda r, h: metrics.sentence_bleu(r, h).score.numpy(),
         "sacrebleu.sentence_bleu loop",
         lambda r, h: [sacrebleu.sentence_bleu(b, [a]) for a, b in zip(r, h)]),
    ]
    print(f"\n{pairs:,} pairs (20-60 words: mixed case, punctuation, digits, "
          f"accents), Python lists, eager, first call excluded; {repeats} "
          f"interleaved runs, CPU ({os.cpu_count()} cores)\n")
    print(f"{'function':15s} {'ours best / median (s)':>24s}   "
          f"{'reference':42s} {'best / median (s)':>19s} {'ratio':>7s}")
    for name, ours, ref_name, reference in cases:
        ours(refs, hyps)  # the first call traces: excluded
        reference(refs, hyps)
        mine, theirs = [], []
        for _ in range(repeats):
            mine.append(_timed(ours, refs, hyps))
            clear_sacrebleu_caches()
            theirs.append(_timed(reference, refs, hyps))
        print(f"{name:15s} {min(mine):11.3f} / {np.median(mine):.3f}   "
              f"{ref_name:42s} {min(theirs):8.3f} / {np.median(theirs):.3f} "
              f"{min(theirs) / min(mine):6.1f}x")
    size = max(1, pairs * 2 // 5)
    print(f"\nfirst call at a new batch size ({size:,} pairs), after the "
          f"calls above (a retrace would show here):")
    for name, ours, ref_name, reference in cases:
        first = _timed(ours, refs[:size], hyps[:size])
        clear_sacrebleu_caches()
        theirs = _timed(reference, refs[:size], hyps[:size])
        print(f"{name:15s} {first:11.3f}   {ref_name:42s} {theirs:8.3f} "
              f"{theirs / first:6.1f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=None,
                        help="4096, or 3000 with --user-calls")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--user-calls", action="store_true",
                        help="time the functions as a user calls them")
    parser.add_argument("--out", default=os.path.join("runs", "metrics_benchmark.png"))
    args = parser.parse_args()
    if args.user_calls:
        user_calls(args.pairs or 3000, args.repeats)
        return
    pairs = args.pairs or 4096
    report(run(pairs, args.repeats), pairs, args.out)


if __name__ == "__main__":
    main()
