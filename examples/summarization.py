"""Summarization from self-feedback: MLE, then BRIO-style ranking by ROUGE-1/2/L.

A word-level LSTM `PolicyNetwork` learns to summarise documents by maximum
likelihood; then, from the same MLE weights and with the same number of
steps, it is fine-tuned three ways and compared on held-out documents:

- `brio`: `ContrastiveTrainer` in `"sequence_likelihood"` mode (BRIO, Liu
  et al. 2022): the policy samples K summaries per document, a composite
  reward (the mean of ROUGE-1, ROUGE-2 and ROUGE-L F against the reference,
  `RougeNReward` / `RougeLReward` on words) ranks them, and the pairwise
  ranking loss on the policy's length-normalised log-likelihood is added to
  the reference's NLL;
- `control`: the same loop with the ranking loss off (`rank_weight=0`),
  i.e. the MLE term alone for the same steps: what BRIO must beat;
- `reinforce`: `ReinforceTrainer` with the same composite reward (RLOO
  baseline, greedy candidate included, a little MLE mixed in).

ROUGE-1/2/L F of greedy summaries are printed for the MLE policy and after
each method, on the dev split (where the settings were chosen) and on the
test split (which reports).

Without `--data` the example uses a SYNTHETIC, rule-generated set of short
news briefs (`synthetic_pairs`): a document is two to four short
sentences (the event, usually first; sometimes its reason; remarks that
name other organisations, some with verbs of their own), and its summary is
a headline built by rules: the short name of the acting organisation, the
verb in the present tense, the short name of the object, and
"after <short reason>" when the document gives one ("the city council
approved a new budget on monday . it followed months of complaints . the
art museum declined to comment ." -> "council approves budget after
complaints"). Test documents use
(organisation, verb, object) events never seen in training. It is a toy:
the figures show the method, not summarization quality on news.

    python examples/summarization.py --seed 0
    python examples/summarization.py --data my_pairs.tsv     # document<TAB>summary
    python examples/summarization.py --data my_pairs.jsonl   # {"document": ..., "summary": ...}

With `--data`, the pairs are shuffled by `--seed` and split 80/10/10 into
train/dev/test (documents never shared across splits). The run writes
`metrics.json` to `--output`.
"""

import argparse
import json
import os
import random
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# --------------------------------------------------------------------------
# The synthetic data set (plain Python, no TensorFlow: tests import it fast).
# --------------------------------------------------------------------------

SYNTHETIC_LABEL = "SYNTHETIC rule-generated news briefs and headlines (keras_selffb examples/summarization.py)"

# (long form in the document, short form in the headline)
ACTORS = [
    ("the city council", "council"),
    ("the local police", "police"),
    ("the state university", "university"),
    ("the football club", "club"),
    ("the regional hospital", "hospital"),
    ("a tech company", "company"),
    ("the school board", "school board"),
    ("the art museum", "museum"),
    ("the farmers union", "union"),
    ("the transport agency", "agency"),
    ("the county court", "court"),
    ("a large bank", "bank"),
]
# (past tense in the document, present tense in the headline)
VERBS = [
    ("approved", "approves"),
    ("rejected", "rejects"),
    ("opened", "opens"),
    ("closed", "closes"),
    ("announced", "announces"),
    ("delayed", "delays"),
    ("sold", "sells"),
    ("bought", "buys"),
    ("cancelled", "cancels"),
    ("expanded", "expands"),
]
OBJECTS = [
    ("a new budget", "budget"),
    ("the river bridge", "bridge"),
    ("a night bus plan", "bus plan"),
    ("its main office", "office"),
    ("a music festival", "festival"),
    ("the public library", "library"),
    ("a parking garage", "garage"),
    ("a jobs program for youth", "jobs program"),
    ("the north sports hall", "sports hall"),
    ("a study of air quality", "air study"),
    ("two empty buildings", "buildings"),
    ("a deal with local shops", "shop deal"),
]
REASONS = [
    ("months of complaints", "complaints"),
    ("a long debate", "debate"),
    ("a drop in funding", "funding cut"),
    ("a safety review", "safety review"),
    ("strong demand", "demand"),
    ("a vote of its members", "vote"),
]
DAYS = ["on monday", "on tuesday", "on friday", "last week", "today"]
REASON_TEMPLATES = ["it followed {}", "officials cited {}"]
REMARKS = [
    "{} declined to comment",
    "{} welcomed the news",
    "{} wants more details",
]
# Remarks that hold a verb and an object of their own: only the event's
# organisation belongs in the headline.
SIDE_EVENT = "{} {} {} last year"
SPLITS = ("train", "dev", "test")


def _event(rng):
    return rng.randrange(len(ACTORS)), rng.randrange(len(VERBS)), rng.randrange(len(OBJECTS))


def make_example(rng, event):
    """One (document, summary) pair for `event = (actor, verb, object)` indices.

    The rule: the summary is `"<actor short> <verb present> <object short>"`,
    followed by `" after <reason short>"` when the document holds a reason
    sentence. Returns `(document, summary, parts)` with `parts` the chosen
    pieces (the hand-written tests check the rule against them).
    """
    actor, verb, obj = event
    key = f"{ACTORS[actor][0]} {VERBS[verb][0]} {OBJECTS[obj][0]} {rng.choice(DAYS)}"
    reason = rng.randrange(len(REASONS)) if rng.random() < 0.5 else None
    others = [i for i in range(len(ACTORS)) if i != actor]
    remarks = []
    for _ in range(rng.randint(1, 2)):
        other = ACTORS[rng.choice(others)][0]
        if rng.random() < 0.3:
            remarks.append(SIDE_EVENT.format(other, rng.choice(VERBS)[0], rng.choice(OBJECTS)[0]))
        else:
            remarks.append(rng.choice(REMARKS).format(other))
    sentences = [key]
    if reason is not None:
        sentences.append(rng.choice(REASON_TEMPLATES).format(REASONS[reason][0]))
    # The event leads the document three times in four; otherwise a remark does.
    if rng.random() < 0.25:
        sentences = [remarks[0]] + sentences + remarks[1:]
    else:
        sentences = sentences + remarks
    document = " . ".join(sentences) + " ."
    summary = f"{ACTORS[actor][1]} {VERBS[verb][1]} {OBJECTS[obj][1]}"
    if reason is not None:
        summary += f" after {REASONS[reason][1]}"
    parts = {"actor": actor, "verb": verb, "object": obj, "reason": reason}
    return document, summary, parts


def synthetic_pairs(seed=0, train_size=3000, dev_size=300, test_size=300, held_out_events=0.2):
    """The labelled synthetic set: `{"train"|"dev"|"test": [(document, summary)]}`.

    The (actor, verb, object) events are split first: a fraction
    `held_out_events` of all 12 x 10 x 12 events is held out and shared
    between dev and test by halves, so no dev or test event is ever seen in
    training (and dev and test share none either). Deterministic: the same
    seed gives the same pairs.

    Args:
        seed: int. Which events go to which split, and every random choice.
        train_size, dev_size, test_size: int. Pairs per split.
        held_out_events: float in (0, 1). Fraction of events held out.
    """
    rng = random.Random(seed)
    events = [(a, v, o) for a in range(len(ACTORS)) for v in range(len(VERBS)) for o in range(len(OBJECTS))]
    rng.shuffle(events)
    held = int(len(events) * held_out_events)
    pools = {"dev": events[: held // 2], "test": events[held // 2: held], "train": events[held:]}
    sizes = {"train": train_size, "dev": dev_size, "test": test_size}
    splits = {}
    for name in SPLITS:
        pool = pools[name]
        splits[name] = [make_example(rng, rng.choice(pool))[:2] for _ in range(sizes[name])]
    return splits


def headline_rule(document):
    """The summary the rule gives for a synthetic `document` (parses it back)."""
    sentences = [s.strip() for s in document.split(" . ")]
    sentences[-1] = sentences[-1].rstrip(" .")
    summary = None
    for sentence in sentences:
        for actor_long, actor_short in ACTORS:
            for past, present in VERBS:
                for obj_long, obj_short in OBJECTS:
                    if sentence.startswith(f"{actor_long} {past} {obj_long} ") and not sentence.endswith(
                        "last year"
                    ):
                        summary = f"{actor_short} {present} {obj_short}"
    if summary is None:
        raise ValueError(f"No event sentence in {document!r}.")
    for sentence in sentences:
        for reason_long, reason_short in REASONS:
            if any(sentence == t.format(reason_long) for t in REASON_TEMPLATES):
                summary += f" after {reason_short}"
    return summary


# --------------------------------------------------------------------------
# A user's data file.
# --------------------------------------------------------------------------

DOCUMENT_FIELDS = (("document", "summary"), ("article", "highlights"), ("text", "summary"))


def load_user_pairs(path):
    """(document, summary) pairs from a `.tsv`, `.jsonl`, `.json` or `.txt` file.

    JSON records may name their fields `document`/`summary`,
    `article`/`highlights` (CNN/DailyMail), `text`/`summary`, or anything
    `keras_selffb.data.load_pairs` reads (`prompt`/`response`,
    `source`/`target`). TSV: `document<TAB>summary` per line (a header line
    is skipped if it is `document<TAB>summary`, `prompt<TAB>response` or
    `source<TAB>target`).
    """
    from keras_selffb.data import load_pairs
    from keras_selffb.data.loaders import read_tsv_rows

    ext = os.path.splitext(path)[1].lower()
    if ext == ".tsv":
        headers = {("document", "summary"), ("prompt", "response"), ("source", "target")}
        pairs = read_tsv_rows(path, ("document", "summary"), headers)
    elif ext in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        stripped = text.lstrip()
        records = json.loads(stripped) if ext == ".json" and stripped.startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()
        ]
        pairs = []
        for number, record in enumerate(records, start=1):
            fields = next((f for f in DOCUMENT_FIELDS if isinstance(record, dict) and all(k in record for k in f)),
                          None)
            if fields is None:
                return load_pairs(path)  # prompt/response or source/target, with its own errors
            document, summary = record[fields[0]], record[fields[1]]
            if not isinstance(document, str) or not isinstance(summary, str):
                raise ValueError(f"{path}, record {number}: '{fields[0]}' and '{fields[1]}' must be strings.")
            pairs.append((" ".join(document.split()), " ".join(summary.split())))
    else:
        pairs = load_pairs(path)
    pairs = [(d, s) for d, s in pairs if d and s]
    if len(pairs) < 10:
        raise ValueError(f"{path}: {len(pairs)} usable (document, summary) pairs; need at least 10.")
    return pairs


def split_user_pairs(pairs, seed, dev_fraction=0.1, test_fraction=0.1):
    """Shuffles by `seed` and splits 80/10/10; pairs sharing a document stay in one split."""
    documents = sorted({d for d, _ in pairs})
    random.Random(seed).shuffle(documents)
    n_dev = max(1, int(len(documents) * dev_fraction))
    n_test = max(1, int(len(documents) * test_fraction))
    where = {d: "dev" for d in documents[:n_dev]}
    where.update({d: "test" for d in documents[n_dev: n_dev + n_test]})
    splits = {name: [] for name in SPLITS}
    for pair in pairs:
        splits[where.get(pair[0], "train")].append(pair)
    return splits


# --------------------------------------------------------------------------
# Rewards, evaluation, the three fine-tuning methods.
# --------------------------------------------------------------------------

METHODS = ("brio", "control", "reinforce")


def composite_reward(tokenizer, tokenize="cjk"):
    """The mean of ROUGE-1, ROUGE-2 and ROUGE-L F on words: the ranking / RL reward, in [0, 1]."""
    from keras_selffb.rewards import RougeLReward, RougeNReward, WeightedReward

    parts = [RougeNReward(1, tokenizer, tokenize), RougeNReward(2, tokenizer, tokenize),
             RougeLReward(tokenizer, tokenize)]
    return WeightedReward([(part, 1.0 / 3.0) for part in parts], name="rouge_mean")


def rouge_scores(references, summaries, tokenize="cjk"):
    """Mean ROUGE-1/2/L F over the pairs (rouge-score's F per pair, averaged), in [0, 1]."""
    from keras_selffb.metrics import rouge_l, rouge_n

    scores = {
        "rouge1": rouge_n(references, summaries, n=1, tokenize=tokenize).fmeasure,
        "rouge2": rouge_n(references, summaries, n=2, tokenize=tokenize).fmeasure,
        "rougeL": rouge_l(references, summaries, tokenize=tokenize).fmeasure,
    }
    return {name: round(float(value.numpy().mean()), 4) for name, value in scores.items()}


def evaluate(generator, packed, pairs, tokenize):
    """Greedy summaries of the packed documents and their ROUGE-1/2/L against the references."""
    from keras_selffb.text import detokenize_texts

    summaries = detokenize_texts(generator.tokenizer, generator.generate_rows(packed))
    return rouge_scores([s for _, s in pairs], summaries, tokenize), summaries


def paired_difference(references, summaries_a, summaries_b, tokenize="cjk"):
    """Per-document ROUGE-L F of `a` minus `b`: mean, standard error, wins / losses / ties of `a`."""
    import numpy as np

    from keras_selffb.metrics import rouge_l

    a = rouge_l(references, summaries_a, tokenize=tokenize).fmeasure.numpy().astype(np.float64)
    b = rouge_l(references, summaries_b, tokenize=tokenize).fmeasure.numpy().astype(np.float64)
    diff = a - b
    return {
        "mean": round(float(diff.mean()), 4),
        "standard_error": round(float(diff.std(ddof=1) / np.sqrt(len(diff))), 4) if len(diff) > 1 else None,
        "wins": int((diff > 1e-9).sum()), "losses": int((diff < -1e-9).sum()),
        "ties": int((abs(diff) <= 1e-9).sum()),
    }


def fine_tune(method, policy, generator, reward, packed, args):
    """Runs `method` on `policy` in place for `args.steps` steps of `args.batch_size` documents."""
    import keras

    from keras_selffb.text import make_dataset
    from keras_selffb.training import ContrastiveTrainer, ReinforceTrainer

    keras.utils.set_random_seed(args.seed)
    if method in ("brio", "control"):
        trainer = ContrastiveTrainer(
            generator, mode="sequence_likelihood", ranking_fn=reward, num_samples=args.num_samples,
            temperature=args.temperature, seed=args.seed, margin=args.margin,
            length_penalty=args.length_penalty, mle_weight=args.mle_weight,
            rank_weight=args.rank_weight if method == "brio" else 0.0,
        )
        learning_rate = args.learning_rate
    else:
        trainer = ReinforceTrainer(
            generator, reward, num_samples=args.num_samples, temperature=1.0, seed=args.seed,
            baseline="rloo", include_greedy=True, gamma=args.rl_gamma,
        )
        learning_rate = args.rl_learning_rate
    trainer.compile(optimizer=keras.optimizers.Adam(learning_rate, clipnorm=1.0), jit_compile=False)
    dataset = make_dataset(packed, args.batch_size, shuffle=True, seed=args.seed).repeat()
    history = trainer.fit(dataset, epochs=1, steps_per_epoch=args.steps, verbose=0)
    return {k: round(float(v[-1]), 4) for k, v in history.history.items()}


def read_splits(args):
    if args.data is None:
        return synthetic_pairs(args.data_seed, train_size=args.train_size), "synthetic"
    return split_user_pairs(load_user_pairs(args.data), args.seed), args.data


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="your own .tsv (document<TAB>summary) or .jsonl of pairs")
    parser.add_argument("--seed", type=int, default=0, help="weights, data order, sampling (and --data's split)")
    parser.add_argument("--data-seed", type=int, default=0, help="the synthetic set's events and sentences")
    parser.add_argument("--train-size", type=int, default=3000, help="synthetic training pairs")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {METHODS}")
    parser.add_argument("--tokenize", default="cjk", help="word segmentation of the ROUGE reward and figures")
    parser.add_argument("--vocabulary", type=int, default=2000, help="WordPiece vocabulary size")
    parser.add_argument("--max-document-tokens", type=int, default=80)
    parser.add_argument("--max-summary-tokens", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--mle-epochs", type=int, default=14)
    parser.add_argument("--mle-learning-rate", type=float, default=1e-2)
    parser.add_argument("--steps", type=int, default=150, help="fine-tuning steps of every method")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-samples", type=int, default=8, help="candidates per document (K)")
    parser.add_argument("--temperature", type=float, default=1.0, help="BRIO candidates' sampling temperature")
    parser.add_argument("--learning-rate", type=float, default=3e-3, help="BRIO and control (Adam)")
    parser.add_argument("--rank-weight", type=float, default=1.0)
    parser.add_argument("--mle-weight", type=float, default=1.0)
    parser.add_argument("--margin", type=float, default=0.01)
    parser.add_argument("--length-penalty", type=float, default=2.0)
    parser.add_argument("--rl-learning-rate", type=float, default=2e-3)
    parser.add_argument("--rl-gamma", type=float, default=0.9, help="REINFORCE weight (1 - gamma: MLE)")
    parser.add_argument("--output", default=None, help="run directory (default runs/summarization_<synthetic or custom>_<seed>)")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m and m != "none"]
    if not set(methods) <= set(METHODS):
        parser.error(f"--methods: choose from {METHODS}, got {args.methods!r}")
    name = "custom" if args.data else "synthetic"
    args.output = args.output or os.path.join("runs", f"summarization_{name}_{args.seed}")
    os.makedirs(args.output, exist_ok=True)

    import keras
    import numpy as np

    from keras_selffb.generator import ResponseGenerator
    from keras_selffb.models import PolicyNetwork
    from keras_selffb.text import WordPieceTokenizer, make_dataset, pack_pairs
    from keras_selffb.training import MLETrainer

    start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    splits, source = read_splits(args)
    train, dev, test = splits["train"], splits["dev"], splits["test"]
    print(f"data: {source} ({len(train)} train / {len(dev)} dev / {len(test)} test pairs)")
    if source == "synthetic":
        print(f"  {SYNTHETIC_LABEL}\n  e.g. {train[0][0]!r}\n    -> {train[0][1]!r}")
    tokenizer = WordPieceTokenizer.train([t for pair in train for t in pair], vocabulary_size=args.vocabulary,
                                         lowercase=True)
    lengths = lambda texts: max(len(ids) for ids in tokenizer.tokenize(texts).to_list())  # noqa: E731
    prompt_length = min(lengths([d for d, _ in train + dev + test]), args.max_document_tokens) + 2  # BOS, SEP
    response_length = min(lengths([s for _, s in train + dev + test]), args.max_summary_tokens) + 1  # EOS
    packed = {k: pack_pairs(tokenizer, v, prompt_length, response_length, warn=False) for k, v in splits.items()}

    policy = PolicyNetwork(tokenizer.vocabulary_size, embedding_dim=64, hidden_dim=args.hidden)
    mle = MLETrainer(policy, prompt_length)
    mle.compile(optimizer=keras.optimizers.Adam(args.mle_learning_rate, clipnorm=1.0), jit_compile=False)
    mle.fit(make_dataset(packed["train"], args.batch_size, shuffle=True, seed=args.seed),
            epochs=args.mle_epochs, verbose=0)
    mle_seconds = time.perf_counter() - start
    generator = ResponseGenerator(policy, tokenizer, prompt_length, response_length, batch_size=100)
    reward = composite_reward(tokenizer, args.tokenize)
    results, summaries = {}, {}
    results["mle"] = {split: evaluate(generator, packed[split], splits[split], args.tokenize)[0]
                      for split in ("dev", "test")}
    summaries["mle"] = evaluate(generator, packed["test"], test, args.tokenize)[1]
    print(f"MLE: {args.mle_epochs} epochs in {mle_seconds:.0f} s; dev {results['mle']['dev']}, "
          f"test {results['mle']['test']}")

    start_weights = policy.get_weights()
    logs, seconds = {}, {}
    for method in methods:
        policy.set_weights(start_weights)
        began = time.perf_counter()
        logs[method] = fine_tune(method, policy, generator, reward, packed["train"], args)
        seconds[method] = round(time.perf_counter() - began, 1)
        results[method] = {split: evaluate(generator, packed[split], splits[split], args.tokenize)[0]
                           for split in ("dev", "test")}
        summaries[method] = evaluate(generator, packed["test"], test, args.tokenize)[1]
        print(f"{method}: {args.steps} steps in {seconds[method]:.0f} s; dev {results[method]['dev']}, "
              f"test {results[method]['test']}; last step {logs[method]}")
    total = time.perf_counter() - start

    print(f"\nheld-out test ({len(test)} documents, {source}, seed {args.seed}): greedy summaries, ROUGE F")
    print(f"{'':<12}{'ROUGE-1':>9}{'ROUGE-2':>9}{'ROUGE-L':>9}   (dev ROUGE-L)")
    for method, figures in results.items():
        t = figures["test"]
        print(f"{method:<12}{t['rouge1']:>9.4f}{t['rouge2']:>9.4f}{t['rougeL']:>9.4f}   "
              f"({figures['dev']['rougeL']:.4f})")
    examples = []
    for i in range(len(test)):
        if len(examples) == 6:
            break
        if len({summaries[m][i] for m in summaries}) > 1:
            examples.append({"document": test[i][0], "reference": test[i][1],
                             **{m: summaries[m][i] for m in summaries}})
    for example in examples[:3]:
        print(f"\n  {example['document']}\n    reference: {example['reference']}")
        for method in summaries:
            print(f"    {method + ':':<11}{example[method]}")
    references = [s for _, s in test]
    comparisons = [(a, b) for a, b in (("brio", "control"), ("brio", "mle"), ("control", "mle"),
                                       ("reinforce", "mle"), ("brio", "reinforce")) if a in summaries and b in summaries]
    paired = {f"{a} - {b}": paired_difference(references, summaries[a], summaries[b], args.tokenize)
              for a, b in comparisons}
    if paired:
        print("\npaired, per test document (ROUGE-L F): mean difference +- standard error; wins/losses/ties")
        for label, d in paired.items():
            print(f"  {label:<20}{d['mean']:+.4f} +- {d['standard_error']:.4f}   {d['wins']}/{d['losses']}/{d['ties']}")
    print(f"\ntotal {total:.0f} s")

    record = {
        "data": source, "label": SYNTHETIC_LABEL if source == "synthetic" else None, "seed": args.seed,
        "data_seed": args.data_seed if source == "synthetic" else None,
        "examples": {k: len(v) for k, v in splits.items()},
        "reward": "mean of ROUGE-1, ROUGE-2 and ROUGE-L F (words, tokenize=%r)" % args.tokenize,
        "settings": {k: v for k, v in vars(args).items() if k not in ("output", "data")},
        "lengths": {"prompt": prompt_length, "response": response_length,
                    "vocabulary": tokenizer.vocabulary_size},
        "results": results, "paired_test_rougeL": paired, "last_step_logs": logs,
        "seconds": {"mle": round(mle_seconds, 1), **seconds, "total": round(total, 1)},
        "examples_changed": examples,
    }
    with open(os.path.join(args.output, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, ensure_ascii=False, indent=1)
    return record


if __name__ == "__main__":
    main()
