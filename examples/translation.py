"""Machine translation from self-feedback: MLE, then rounds rewarded by chrF (+ BLEU).

A character-level `PolicyNetwork` learns to translate a TSV of sentence
pairs (`source<TAB>target` per line) by maximum likelihood, then
`SelfFeedbackLoop` runs REINFORCE rounds whose reward is sentence chrF
(`ChrFReward`, equal to sacrebleu's chrF2 / 100), optionally plus sentence
BLEU with sacrebleu's `zh` tokenization for Chinese targets. Held-out
corpus BLEU, corpus chrF and exact match are printed before and after.

No parallel corpus ships in an installable package, so without `--data`
the example writes and uses a SYNTHETIC, generated EN<->ZH data set
(`synthetic_pairs`): cardinal numbers 0-9999 written out in English
("three thousand and forty-two") and in Chinese ("三千零四十二"), and dates
("March 5, 2021" <-> "2021年3月5日"). Its splits are disjoint by value
(no test number or date is seen in training). It is a toy: what it shows
is the method, not translation quality on natural text.

    python examples/translation.py --direction en-zh --seed 0
    python examples/translation.py --direction zh-en --seed 1
    python examples/translation.py --data my_pairs.tsv    # your own pairs

With `--data FILE.tsv`, the file's pairs are shuffled by the seed and
split 80/10/10 into train/dev/test (or give `--dev` and `--test` files).
The run writes `metrics.json` (and the generated TSVs) to `--output`.
"""

import argparse
import calendar
import datetime
import json
import os
import random
import shutil
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# --------------------------------------------------------------------------
# The synthetic data set (plain Python, no TensorFlow: tests import it fast).
# --------------------------------------------------------------------------

_EN_UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
             "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
             "eighteen", "nineteen"]
_EN_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_ZH_DIGITS = "零一二三四五六七八九"
_ZH_PLACES = ["千", "百", "十", ""]
MAX_NUMBER = 9999
SYNTHETIC_LABEL = "SYNTHETIC generated EN-ZH numbers and dates (keras_selffb examples/translation.py)"


def english_number(n):
    """Cardinal `n` (0-9999) in British English: "three thousand and forty-two".

    "and" comes before the last two digits when something precedes them
    ("one hundred and five", "two thousand and seven"); tens and units are
    hyphenated ("forty-two").
    """
    if not 0 <= n <= MAX_NUMBER or int(n) != n:
        raise ValueError(f"english_number takes an integer in [0, {MAX_NUMBER}], got {n!r}.")
    if n < 20:
        return _EN_UNITS[n]
    if n < 100:
        tens, units = divmod(n, 10)
        return _EN_TENS[tens] + (f"-{_EN_UNITS[units]}" if units else "")
    words = []
    thousands, rest = divmod(n, 1000)
    if thousands:
        words.append(f"{_EN_UNITS[thousands]} thousand")
    hundreds, rest = divmod(rest, 100)
    if hundreds:
        words.append(f"{_EN_UNITS[hundreds]} hundred")
    if rest:
        words.append("and " + english_number(rest))
    return " ".join(words)


def chinese_number(n):
    """Cardinal `n` (0-9999) in Chinese characters: "三千零四十二".

    Digits with their place (千, 百, 十); one 零 stands for any run of zeros
    between two non-zero digits (1001 一千零一, 1010 一千零一十); trailing
    zeros are not read (3000 三千); 10-19 drop the leading 一 (十二) but a
    larger number keeps it (112 一百一十二). 2 is 二 in every place (the
    written form; speech often says 两千, 两百).
    """
    if not 0 <= n <= MAX_NUMBER or int(n) != n:
        raise ValueError(f"chinese_number takes an integer in [0, {MAX_NUMBER}], got {n!r}.")
    if n == 0:
        return "零"
    digits = [int(d) for d in f"{n:04d}"]
    out, pending_zero, started = [], False, False
    for digit, place in zip(digits, _ZH_PLACES):
        if digit == 0:
            pending_zero = started
            continue
        if pending_zero:
            out.append("零")
        out.append(_ZH_DIGITS[digit] + place)
        started, pending_zero = True, False
    text = "".join(out)
    return text[1:] if 10 <= n <= 19 else text


def english_date(date):
    """`datetime.date` -> "March 5, 2021"."""
    return f"{calendar.month_name[date.month]} {date.day}, {date.year}"


def chinese_date(date):
    """`datetime.date` -> "2021年3月5日" (Arabic digits, as written in running text)."""
    return f"{date.year}年{date.month}月{date.day}日"


def _split(values, rng, dev, test):
    values = list(values)
    rng.shuffle(values)
    return values[dev + test:], values[:dev], values[dev: dev + test]


def synthetic_pairs(seed=0, train_numbers=600, train_dates=150, dev_size=200, test_size=400,
                    first_year=1950, last_year=2049):
    """The labelled synthetic EN-ZH data set: `{"train"|"dev"|"test": [(english, chinese)]}`.

    Numbers 0-9999 and dates from `first_year` to `last_year`, each value in
    one split only (shuffled by `seed`); every split holds about 4 numbers
    for 1 date. Deterministic: the same seed gives the same pairs.

    Args:
        seed: int. Which values go to which split.
        train_numbers, train_dates: int. Training pairs of each kind.
        dev_size, test_size: int. Pairs in the dev and test splits.
        first_year, last_year: int. The dates' year range.
    """
    rng = random.Random(seed)
    dev_dates, test_dates = dev_size // 5, test_size // 5
    numbers = _split(range(MAX_NUMBER + 1), rng, dev_size - dev_dates, test_size - test_dates)
    days = (datetime.date(last_year, 12, 31) - datetime.date(first_year, 1, 1)).days + 1
    dates = _split((datetime.date(first_year, 1, 1) + datetime.timedelta(d) for d in range(days)),
                   rng, dev_dates, test_dates)
    limits = {"train": (train_numbers, train_dates), "dev": (None, None), "test": (None, None)}
    splits = {}
    for index, name in enumerate(("train", "dev", "test")):
        max_numbers, max_dates = limits[name]
        pairs = [(english_number(n), chinese_number(n)) for n in numbers[index][:max_numbers]]
        pairs += [(english_date(d), chinese_date(d)) for d in dates[index][:max_dates]]
        rng.shuffle(pairs)
        splits[name] = pairs
    return splits


def orient(pairs, direction):
    """(english, chinese) pairs as (source, target) for `"en-zh"` or `"zh-en"`."""
    if direction not in ("en-zh", "zh-en"):
        raise ValueError(f"direction must be 'en-zh' or 'zh-en', got {direction!r}.")
    return list(pairs) if direction == "en-zh" else [(zh, en) for en, zh in pairs]


def write_tsv(path, pairs, label=None):
    """Writes `source<TAB>target` lines with a `source<TAB>target` header (and a label comment file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("source\ttarget\n")
        for source, target in pairs:
            if "\t" in source + target or "\n" in source + target:
                raise ValueError(f"A pair holds a tab or a newline: {(source, target)!r}.")
            f.write(f"{source}\t{target}\n")
    if label:
        with open(path + ".LABEL", "w", encoding="utf-8") as f:
            f.write(label + "\n")
    return path


# --------------------------------------------------------------------------
# Training and evaluation.
# --------------------------------------------------------------------------


def target_tokenize(texts):
    """sacrebleu's BLEU tokenization for these targets: `zh` when any has a Han character, else `13a`."""
    return "zh" if any("\u4e00" <= c <= "\u9fff" for t in texts for c in t) else "13a"


def held_out_scores(references, hypotheses):
    """Corpus BLEU (sacrebleu-equal, `zh` tokenization for Chinese), corpus chrF2 and exact match (%)."""
    from keras_selffb.metrics import chrf, corpus_bleu

    tokenize = target_tokenize(references)
    return {
        "bleu": round(float(corpus_bleu(references, hypotheses, tokenize=tokenize).score), 2),
        "chrf": round(float(chrf(references, hypotheses)), 2),
        "exact_match": round(100.0 * sum(r == h for r, h in zip(references, hypotheses)) / len(references), 2),
    }


def make_reward(name, tokenizer, target_texts):
    """`"chrf"`, `"bleu"` or `"bleu+chrf"` (mean of the two), all on a 0-1 scale."""
    from keras_selffb.rewards import BleuReward, ChrFReward, WeightedReward

    chrf_reward = ChrFReward(tokenizer)
    bleu_reward = BleuReward(tokenizer, tokenize=target_tokenize(target_texts))
    if name == "chrf":
        return chrf_reward
    if name == "bleu":
        return bleu_reward
    return WeightedReward([(chrf_reward, 0.5), (bleu_reward, 0.5)], name="bleu+chrf")


def read_splits(args):
    from keras_selffb.data import load_pairs

    if args.data is None:
        splits = {k: orient(v, args.direction) for k, v in synthetic_pairs(args.data_seed, args.train_numbers, args.train_dates).items()}
        for name, pairs in splits.items():
            write_tsv(os.path.join(args.output, f"{name}.tsv"), pairs, SYNTHETIC_LABEL)
        return splits, "synthetic"
    pairs = load_pairs(args.data)
    if args.dev and args.test:
        return {"train": pairs, "dev": load_pairs(args.dev), "test": load_pairs(args.test)}, args.data
    pairs = list(dict.fromkeys(pairs))
    random.Random(args.seed).shuffle(pairs)
    n_dev = n_test = max(1, len(pairs) // 10)
    return {"train": pairs[n_dev + n_test:], "dev": pairs[:n_dev], "test": pairs[n_dev: n_dev + n_test]}, args.data


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--direction", default="en-zh", choices=["en-zh", "zh-en"],
                        help="synthetic data: which side is the source")
    parser.add_argument("--data", help="your own TSV of source<TAB>target pairs (instead of the synthetic set)")
    parser.add_argument("--dev", help="with --data: a dev TSV (else 10%% of --data)")
    parser.add_argument("--test", help="with --data: a test TSV (else 10%% of --data)")
    parser.add_argument("--seed", type=int, default=0, help="weights, data order and sampling")
    parser.add_argument("--data-seed", type=int, default=0, help="the synthetic set's split")
    parser.add_argument("--train-numbers", type=int, default=600, help="synthetic training numbers")
    parser.add_argument("--train-dates", type=int, default=150, help="synthetic training dates")
    parser.add_argument("--mle-epochs", type=int, default=80, help="cap; early stopping on dev perplexity (--patience) ends MLE first")
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rl-steps", type=int, default=40, help="REINFORCE steps per round")
    parser.add_argument("--reward", default="chrf", choices=["chrf", "bleu", "bleu+chrf"])
    parser.add_argument("--method", default="rl", choices=["rl", "filtered", "rl,filtered"])
    parser.add_argument("--rl-lr", type=float, default=5e-4, help="learning rate of the rounds")
    parser.add_argument("--kl", type=float, default=0.02, help="KL penalty to the MLE policy")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--output", default=None, help="run directory (default runs/translation_<direction>_<seed>)")
    args = parser.parse_args(argv)
    name = "custom" if args.data else args.direction
    args.output = args.output or os.path.join("runs", f"translation_{name}_{args.seed}")

    import keras
    import numpy as np

    from keras_selffb.generator import ResponseGenerator
    from keras_selffb.loop import SelfFeedbackLoop
    from keras_selffb.models import PolicyNetwork, frozen_copy
    from keras_selffb.text import CharTokenizer, make_dataset, pack_pairs
    from keras_selffb.training import MLETrainer
    from keras_selffb.training.checkpoint import fit_resumable

    start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    # Every run starts afresh (the checkpoints of an earlier run would be resumed).
    shutil.rmtree(os.path.join(args.output, "checkpoints"), ignore_errors=True)
    os.makedirs(args.output, exist_ok=True)
    splits, source = read_splits(args)
    train, dev, test = splits["train"], splits["dev"], splits["test"]
    print(f"data: {source} ({len(train)} train / {len(dev)} dev / {len(test)} test pairs)"
          + (f"; direction {args.direction}; TSVs in {args.output}" if source == "synthetic" else ""))
    tokenizer = CharTokenizer.train([t for pair in train for t in pair])
    prompt_length = max(len(s) for s, _ in train + dev + test) + 2  # BOS and SEP
    response_length = max(len(t) for _, t in train + dev + test) + 1  # EOS
    packed = pack_pairs(tokenizer, train, prompt_length, response_length, warn=False)
    dev_packed = pack_pairs(tokenizer, dev, prompt_length, response_length, warn=False)

    policy = PolicyNetwork(tokenizer.vocabulary_size, embedding_dim=64, hidden_dim=args.hidden, dropout=0.1)
    mle = MLETrainer(policy, prompt_length)
    mle.compile(optimizer=keras.optimizers.Adam(3e-3, clipnorm=1.0))
    order = np.random.default_rng(args.seed)
    epoch_orders = [order.permutation(len(packed)) for _ in range(args.mle_epochs)]
    fit_resumable(
        mle, lambda epoch: make_dataset(packed[epoch_orders[epoch]], 32), args.mle_epochs,
        os.path.join(args.output, "checkpoints", "mle"), validation_data=make_dataset(dev_packed, 64),
        monitor="val_perplexity", mode="min", patience=args.patience, verbose=2,
    )
    mle_seconds = time.perf_counter() - start
    generator = ResponseGenerator(policy, tokenizer, prompt_length, response_length, batch_size=200)
    references = [t for _, t in test]
    before_replies = generator([s for s, _ in test])
    before = held_out_scores(references, before_replies)
    print(f"MLE done in {mle_seconds:.0f} s; test {before}")

    reward = make_reward(args.reward, tokenizer, [t for _, t in train])
    reference_policy = frozen_copy(policy)
    loop = SelfFeedbackLoop(
        policy, tokenizer, reward, train, dev, prompt_length, response_length,
        methods=tuple(args.method.split(",")), rounds=args.rounds, num_samples=4, temperature=1.0,
        rl_steps=args.rl_steps, rl_batch_size=16, rl_learning_rate=args.rl_lr,
        rl_options={"baseline": "rloo", "kl_coef": args.kl, "reference_policy": reference_policy,
                    "gamma": 0.9, "include_greedy": True},
        threshold_quantiles=(0.5, 0.6, 0.7), epochs_per_round=1, learning_rate=args.rl_lr,
        monitor="val_reward", restore_best=True, eval_metrics=("bleu",),
        directory=os.path.join(args.output, "checkpoints", "loop"), log_dir=args.output,
        seed=args.seed, score_batch_size=200, verbose=2,
    )
    history = loop.run()
    after_replies = generator([s for s, _ in test])
    after = held_out_scores(references, after_replies)
    seconds = time.perf_counter() - start

    print(f"\nheld-out test ({len(test)} pairs, {source}{'' if args.data else ', ' + args.direction}, "
          f"seed {args.seed}; BLEU tokenize={target_tokenize(references)})")
    print(f"{'':<22}{'BLEU':>8}{'chrF':>8}{'exact %':>9}")
    for label, scores in (("after MLE", before), (f"after {len(history) - 1} round(s)", after)):
        print(f"{label:<22}{scores['bleu']:>8.2f}{scores['chrf']:>8.2f}{scores['exact_match']:>9.2f}")
    print(f"dev reward per round ({reward.name}): "
          + ", ".join(f"{h['metrics']['val_reward']:.4f}" for h in history)
          + f"; kept round {loop.best_round()}; total {seconds:.0f} s")
    changed = [i for i, (b, a) in enumerate(zip(before_replies, after_replies)) if b != a][:6]
    for i in changed:
        print(f"  {test[i][0]}\n    MLE:   {before_replies[i]}\n    after: {after_replies[i]}\n    ref:   {test[i][1]}")

    record = {
        "data": source, "label": SYNTHETIC_LABEL if source == "synthetic" else None,
        "direction": None if args.data else args.direction, "seed": args.seed, "data_seed": args.data_seed,
        "examples": {k: len(v) for k, v in splits.items()}, "reward": reward.name, "method": args.method,
        "settings": {k: getattr(args, k) for k in ("train_numbers", "train_dates", "mle_epochs", "patience", "rounds", "rl_steps", "rl_lr", "kl", "hidden")},
        "bleu_tokenize": target_tokenize(references),
        "test": {"mle": before, "self_feedback": after},
        "dev_rounds": [{"round": h["round"], **{k: round(v, 4) for k, v in h["metrics"].items()}}
                       for h in history],
        "kept_round": loop.best_round(),
        "seconds": {"mle": round(mle_seconds, 1), "total": round(seconds, 1)},
        "examples_changed": [{"source": test[i][0], "reference": test[i][1], "mle": before_replies[i],
                              "self_feedback": after_replies[i]} for i in changed],
    }
    with open(os.path.join(args.output, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, ensure_ascii=False, indent=1)
    return record


if __name__ == "__main__":
    main()
