"""`ResponseGenerator`: one object for a policy and everything it needs to reply.

Like keras-hub's `CausalLM` task (backbone + preprocessor + sampler), a
`ResponseGenerator` owns the policy (a `PolicyNetwork` or a
`CausalLMPolicy`), its tokenizer, the prompt and reply lengths, the sampler
and the batch size, and offers the three things every part of the package
does with a policy:

- **generate**: strings in, strings out (`generator(prompts)`), or ids
  (`generate_ids`, `generate_rows` for packed rows, several samples each);
- **score**: per-token log-probabilities of given replies (`score`), and the
  references' perplexity (`perplexity`);
- **evaluate**: greedy replies to `(prompt, reference)` pairs scored by
  ROUGE-L, BLEU, perplexity, distinct-n, self-BLEU and mean length
  (`evaluate`).

The trainers, `SelfFeedbackLoop`, the callbacks, the evaluation, the
contrastive stage and export accept a generator where they took
`(policy, tokenizer, prompt_length, max_new_tokens)`; they all generate and
evaluate through it, so there is one evaluation path and one batching helper
(`fixed_batches` / `map_batched`: every call has the same shape, so each
`tf.function` traces once).
"""

import re
import warnings

import keras_hub
import numpy as np
import tensorflow as tf

from keras_selffb.metrics import corpus_bleu, distinct_n, perplexity_statistics, rouge_l, self_bleu
from keras_selffb.models.generation import (
    _is_integer,
    check_sampler_vocabulary,
    generate_ids,
    get_sampler,
    reseed_sampler,
)
from keras_selffb.models.scoring import response_token_nll
from keras_selffb.text import segmentation
from keras_selffb.text.packing import pack_pairs, pack_prompts
from keras_selffb.text.tokenizer import PAD_ID, detokenize_texts

# What `ResponseGenerator.evaluate` can compute; the first three by default.
METRICS = (
    "rouge_l", "bleu", "perplexity", "distinct_1", "distinct_2", "distinct_replies", "self_bleu",
    "mean_reply_length", "exact_match",
)
DEFAULT_METRICS = ("rouge_l", "bleu", "perplexity")
# Metrics computed from the reply strings alone (`score_replies`).
TEXT_METRICS = (
    "rouge_l", "bleu", "distinct_1", "distinct_2", "distinct_replies", "self_bleu", "mean_reply_length",
    "exact_match",
)
# Samplers without a random stream: their replies do not depend on how the
# prompts are split over replicas.
_DETERMINISTIC = (keras_hub.samplers.GreedySampler, keras_hub.samplers.BeamSampler)
_HAN = re.compile(r"[\u4e00-\u9fff]")


def fixed_batches(arrays, batch_size, multiple=1):
    """Cuts aligned arrays into chunks of one fixed number of rows.

    The size is `batch_size` (or the number of rows, if fewer), rounded up
    to a multiple of `multiple` (the replicas of a strategy, so each gets
    the same number of rows). The last chunk is padded with copies of its
    last row, so every call of a `tf.function` on the chunks has the same
    shape and traces once.

    Args:
        arrays: list of NumPy arrays with the same number of rows (>= 1).
        batch_size: int >= 1. Rows per chunk.
        multiple: int >= 1. The chunk size is rounded up to a multiple of it.

    Yields:
        `(start, chunks, real)`: the first row's index, the list of chunks
        (one per array) and how many of their rows are real.

    Example:

    >>> [(s, c[0].tolist(), r) for s, c, r in fixed_batches([np.arange(5)], 2)]
    [(0, [0, 1], 2), (2, [2, 3], 2), (4, [4, 4], 1)]
    """
    total = len(arrays[0])
    if total == 0:
        raise ValueError("Nothing to batch: the arrays have no rows.")
    if any(len(a) != total for a in arrays):
        raise ValueError(f"Arrays to batch together differ in rows: {[len(a) for a in arrays]}.")
    if not _is_integer(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}.")
    size = -(-min(batch_size, total) // multiple) * multiple
    for start in range(0, total, size):
        chunks = [np.asarray(a[start : start + size]) for a in arrays]
        real = len(chunks[0])
        if real < size:
            chunks = [np.concatenate([c, np.repeat(c[-1:], size - real, axis=0)]) for c in chunks]
        yield start, chunks, real


def map_batched(fn, arrays, batch_size):
    """`fn(*chunks)` over `fixed_batches(arrays, batch_size)`, cut back and joined.

    Returns:
        NumPy array: the outputs' real rows, concatenated.

    Example:

    >>> map_batched(lambda x: x * 2, [np.arange(5)], 2).tolist()
    [0, 2, 4, 6, 8]
    """
    outputs = [
        np.asarray(fn(*[tf.constant(c) for c in chunks]))[:real]
        for _, chunks, real in fixed_batches(arrays, batch_size)
    ]
    return np.concatenate(outputs)


def bleu_tokenization(texts):
    """`"zh"` if any text has a Han character, else `"13a"` (sacrebleu's choice)."""
    return "zh" if any(_HAN.search(t) for t in texts) else "13a"


def score_replies(references, replies, metrics=("rouge_l", "bleu")):
    """Scores reply strings against reference strings.

    Args:
        references: list of str.
        replies: list of str, one per reference.
        metrics: names among `TEXT_METRICS`: `"rouge_l"` (mean ROUGE-L F1,
            `cjk` segmentation), `"bleu"` (corpus BLEU on the 0-100 scale,
            tokenization `13a`, or `zh` when the references hold Chinese),
            `"distinct_1"`, `"distinct_2"` (distinct n-gram ratio of the
            replies, `cjk` segmentation), `"distinct_replies"` (number of
            different reply strings), `"self_bleu"` (mean BLEU, 0-1, of
            each reply against the other replies, `cjk` segmentation; see
            `keras_selffb.metrics.self_bleu`) and `"mean_reply_length"`
            (mean number of `cjk` words per reply; 0 for no replies). Together
            they flag replies collapsing onto one generic reply.
            `"exact_match"` is the percentage (0-100) of replies equal to
            their reference, after stripping surrounding whitespace (0 for
            no replies). Defaults to ROUGE-L and BLEU.

    Returns:
        dict name -> float.

    Example:

    >>> score_replies(["a b", "a c"], ["a b", "a b"], ["rouge_l", "distinct_replies"])
    {'rouge_l': 0.75, 'distinct_replies': 1.0}
    """
    unknown = set(metrics) - set(TEXT_METRICS)
    if unknown:
        raise ValueError(f"Unknown text metric(s) {sorted(unknown)}; choose from {TEXT_METRICS}.")
    if len(references) != len(replies):
        raise ValueError(f"{len(replies)} replies for {len(references)} references.")
    scores = {}
    for name in metrics:
        if name == "rouge_l":
            scores[name] = float(tf.reduce_mean(rouge_l(references, replies, tokenize="cjk").fmeasure))
        elif name == "bleu":
            scores[name] = float(corpus_bleu(references, replies, tokenize=bleu_tokenization(references)).score)
        elif name == "distinct_replies":
            scores[name] = float(len(set(replies)))
        elif name == "exact_match":
            same = [r.strip() == t.strip() for r, t in zip(replies, references)]
            scores[name] = 100.0 * float(np.mean(same)) if same else 0.0
        elif name == "self_bleu":
            scores[name] = self_bleu(replies, tokenize="cjk")
        elif name == "mean_reply_length":
            lengths = segmentation.segment(replies, "cjk").row_lengths().numpy() if replies else [0]
            scores[name] = float(np.mean(lengths))
        else:
            scores[name] = float(distinct_n(replies, n=int(name[-1]), tokenize="cjk"))
    return scores


class ResponseGenerator:
    """A policy with its tokenizer, lengths and sampler: generate, score, evaluate.

    Sampling runs in a `tf.function` traced once per sampler and number of
    samples (the batches have a fixed shape). A `seed` given to a call
    resets the sampler's random state first, so the same seed gives the
    same replies.

    Args:
        policy: a `PolicyNetwork` or a `CausalLMPolicy`.
        tokenizer: the tokenizer the policy was trained with; its
            vocabulary size must be the policy's.
        prompt_length: int. Prompt columns, BOS and SEP included.
        max_new_tokens: int. Longest reply in tokens, EOS included; also the
            reference columns of `pack`.
        sampler: str, dict or keras-hub sampler. Defaults to `"greedy"`.
        batch_size: int. Rows per generation / scoring call (over all
            replicas). Defaults to `64`.
        strategy: optional `tf.distribute.Strategy`. With several replicas
            and a deterministic sampler (greedy, beam), each batch is split
            evenly over the replicas; a stochastic sampler runs on one, so
            one seeded stream gives the same replies whatever the number of
            replicas. Defaults to `None` (one device).
        **sampler_kwargs: arguments for a named sampler (`k`, `p`,
            `num_beams`, `temperature`, `seed`).

    Example:

    >>> from keras_selffb.models import PolicyNetwork
    >>> from keras_selffb.text import CharTokenizer
    >>> tokenizer = CharTokenizer.train(["hi there", "hello"])
    >>> policy = PolicyNetwork(tokenizer.vocabulary_size, 8, 8)
    >>> generator = ResponseGenerator(policy, tokenizer, prompt_length=8, max_new_tokens=4)
    >>> len(generator(["hi", "hello"]))  # strings in, strings out
    2
    >>> generator.score(generator.pack([("hi", "hello")])).shape  # log p of each reply token
    (1, 4)
    >>> sorted(generator.evaluate([("hi", "hello")]))
    ['bleu', 'perplexity', 'replies', 'reply_ids', 'rouge_l']
    """

    def __init__(
        self,
        policy,
        tokenizer,
        prompt_length,
        max_new_tokens,
        sampler="greedy",
        batch_size=64,
        strategy=None,
        **sampler_kwargs,
    ):
        if tokenizer.vocabulary_size != policy.vocab_size:
            raise ValueError(
                f"Vocabulary mismatch: the tokenizer has {tokenizer.vocabulary_size} "
                f"tokens but the policy was built for {policy.vocab_size}."
            )
        for name, value, low in (("prompt_length", prompt_length, 3), ("max_new_tokens", max_new_tokens, 1),
                                 ("batch_size", batch_size, 1)):
            if not _is_integer(value) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}; got {value!r}.")
        self.policy = policy
        self.tokenizer = tokenizer
        self.prompt_length = int(prompt_length)
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = int(batch_size)
        self.sampler = get_sampler(sampler, **sampler_kwargs)
        check_sampler_vocabulary(self.sampler, policy.vocab_size)
        self.strategy = strategy
        self._step = tf.function(self._generate, reduce_retracing=True)
        self._generate_fns = {}
        self._statistics_fn = None
        self._score_fn = None

    def __repr__(self):
        return (
            f"ResponseGenerator({type(self.policy).__name__}, vocabulary {self.vocab_size}, "
            f"prompt_length={self.prompt_length}, max_new_tokens={self.max_new_tokens}, "
            f"sampler={type(self.sampler).__name__})"
        )

    @property
    def vocab_size(self):
        return self.policy.vocab_size

    @property
    def replicas(self):
        """Replicas each batch is split over with the generator's sampler (1: one device)."""
        return self._replicas(self.sampler)[1]

    def _replicas(self, sampler):
        """The strategy and its replicas when batches are split over them, else `(None, 1)`."""
        strategy = self.strategy
        if strategy is None or strategy.num_replicas_in_sync < 2 or not isinstance(sampler, _DETERMINISTIC):
            return None, 1
        return strategy, strategy.num_replicas_in_sync

    # -- packing ------------------------------------------------------------

    def pack(self, pairs):
        """`(prompt, reference)` str pairs as int32 rows `(N, prompt_length + max_new_tokens)`."""
        return pack_pairs(self.tokenizer, list(pairs), self.prompt_length, self.max_new_tokens, warn=False)

    def rows(self, data):
        """Packed rows and reference strings from pairs or packed rows.

        Args:
            data: list of `(prompt, reference)` str pairs, or packed int rows
                `(N, prompt_length + R)` (NumPy array or tensor).

        Returns:
            `(rows, references)`: int32 `(N, P + R)` and a list of str.
        """
        if isinstance(data, tf.Tensor):
            data = data.numpy()
        if isinstance(data, np.ndarray) and data.dtype.kind in "iu":
            if data.ndim != 2 or data.shape[1] <= self.prompt_length or not len(data):
                raise ValueError(
                    f"Packed rows must be (N >= 1, prompt_length + R) with R >= 1 "
                    f"(prompt_length={self.prompt_length}); got shape {data.shape}."
                )
            rows = data.astype("int32")
            return rows, detokenize_texts(self.tokenizer, rows[:, self.prompt_length :])
        pairs = [(prompt, reference) for prompt, reference in data]
        if not pairs:
            raise ValueError("Nothing to evaluate: no (prompt, reference) pairs.")
        return self.pack(pairs), [reference for _, reference in pairs]

    # -- generate -------------------------------------------------------------

    def _generate(self, prompt_ids):
        return generate_ids(self.policy, prompt_ids, self.max_new_tokens, self.sampler)

    def reseed(self, seed):
        """Resets the sampler's random state to `seed`."""
        reseed_sampler(self.sampler, seed)

    def pack_prompts(self, prompts):
        """A str or list of str as left-padded prompt ids: `(ids (B, P), truncated (B,))`."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise ValueError("generate() needs at least one prompt.")
        return pack_prompts(self.tokenizer, prompts, self.prompt_length)

    def generate_ids(self, prompts, seed=None):
        """Returns `(prompt_ids, response_ids, truncated)` for a list of str, in one call."""
        prompt_ids, truncated = self.pack_prompts(prompts)
        if seed is not None:
            self.reseed(seed)
        return prompt_ids, self._step(prompt_ids), truncated

    def _generate_fn(self, sampler, num_samples):
        key = (id(sampler), num_samples)
        if key not in self._generate_fns:
            strategy, _ = self._replicas(sampler)
            policy, length, columns = self.policy, self.max_new_tokens, self.prompt_length

            def generate(rows):
                prompts = tf.repeat(rows[:, :columns], num_samples, axis=0)
                return generate_ids(policy, prompts, length, sampler)

            if strategy is None:
                # A last chunk smaller than the others (fewer rows than
                # batch_size) traces once more, then shapes generalise.
                fn = tf.function(generate, reduce_retracing=True)
            else:
                fn = tf.function(lambda rows: strategy.gather(strategy.run(generate, args=(rows,)), axis=0))
            self._generate_fns[key] = (sampler, fn)  # keeps the sampler alive: its id stays unique
        return self._generate_fns[key][1]

    def generate_rows(self, rows, num_samples=1, sampler=None, seed=None):
        """Replies to packed rows (or prompt ids), in fixed-size batches.

        Args:
            rows: int `(N, >= prompt_length)`: packed rows or prompt ids;
                the first `prompt_length` columns are the prompt.
            num_samples: int. Replies per row, prompt-major (the replies to
                row `i` are rows `i * K` to `i * K + K - 1`). Defaults to `1`.
            sampler: a keras-hub sampler (or a name / dict) to use instead of
                the generator's. Defaults to `None`.
            seed: int. Resets the sampler's random state first. Defaults
                to `None`.

        Returns:
            int32 NumPy array `(N * num_samples, max_new_tokens)`.
        """
        if sampler is None:
            sampler = self.sampler
        elif not hasattr(sampler, "get_next_token"):
            sampler = get_sampler(sampler)
        if seed is not None:
            reseed_sampler(sampler, seed)
        rows = np.asarray(rows, np.int32)
        if rows.ndim != 2 or rows.shape[1] < self.prompt_length:
            raise ValueError(
                f"Rows to reply to must be (N, >= prompt_length={self.prompt_length}); got shape {rows.shape}."
            )
        fn = self._generate_fn(sampler, num_samples)
        strategy, replicas = self._replicas(sampler)
        out = []
        for _, (chunk,), real in fixed_batches([rows[:, : self.prompt_length]], self.batch_size, replicas):
            ids = fn(self._distribute(chunk, strategy, replicas))
            out.append(np.asarray(ids)[: real * num_samples])
        return np.concatenate(out)

    def __call__(self, prompts, seed=None):
        """Replies to each prompt; a list of str (prompts cut from the front warn)."""
        prompt_ids, truncated = self.pack_prompts(prompts)
        if bool(tf.reduce_any(truncated)):
            warnings.warn(
                f"{int(tf.reduce_sum(tf.cast(truncated, tf.int32)))} prompt(s) longer "
                f"than {self.prompt_length - 2} tokens kept their last tokens.",
                stacklevel=2,
            )
        return detokenize_texts(self.tokenizer, self.generate_rows(prompt_ids.numpy(), seed=seed))

    generate = __call__

    # -- score ----------------------------------------------------------------

    def _statistics(self, rows, weights):
        """Summed NLL of the rows' replies and their token count, `weights` 0 dropping a row."""
        references = rows[:, self.prompt_length :]
        _, _, logits = response_token_nll(self.policy, rows[:, : self.prompt_length], references)
        mask = tf.cast(weights, tf.float32)[:, None]
        return perplexity_statistics(logits, references, mask=mask, pad_id=PAD_ID)

    def score(self, rows):
        """Per-token log-probabilities of each packed row's reply tokens.

        Args:
            rows: int `(N, prompt_length + R)`: packed `(prompt, reply)` rows
                (`pack`), or pairs of str.

        Returns:
            float32 NumPy array `(N, R)`: log p(token | prompt, earlier
            tokens) of each reply token (EOS included), 0 on padding.
        """
        rows, _ = self.rows(rows)
        columns = self.prompt_length

        def log_probs(chunk):
            nll, mask, _ = response_token_nll(self.policy, chunk[:, :columns], chunk[:, columns:])
            return -nll * mask

        if self._score_fn is None:
            self._score_fn = tf.function(log_probs)
        return map_batched(self._score_fn, [rows], self.batch_size)

    def perplexity(self, rows):
        """Token-weighted perplexity of the packed rows' replies (EOS counted, PAD not)."""
        rows, _ = self.rows(rows)
        strategy = self.strategy if self.strategy is not None and self.strategy.num_replicas_in_sync > 1 else None
        replicas = strategy.num_replicas_in_sync if strategy else 1
        if self._statistics_fn is None:
            if strategy is None:
                self._statistics_fn = tf.function(self._statistics)
            else:
                self._statistics_fn = tf.function(
                    lambda rows, weights: strategy.reduce(
                        "SUM", strategy.run(self._statistics, args=(rows, weights)), axis=None
                    )
                )
        total, tokens = 0.0, 0.0
        for _, (chunk,), real in fixed_batches([rows], self.batch_size, replicas):
            weights = (np.arange(len(chunk)) < real).astype("float32")
            nll, count = self._statistics_fn(
                self._distribute(chunk, strategy, replicas), self._distribute(weights, strategy, replicas)
            )
            total += float(nll)
            tokens += float(count)
        return float(np.exp(total / max(tokens, 1.0)))

    # -- evaluate -------------------------------------------------------------

    def evaluate(self, data, metrics=DEFAULT_METRICS, seed=None, sampler=None):
        """Replies to each prompt and scores the replies against the references.

        Args:
            data: `(prompt, reference)` str pairs, or packed rows.
            metrics: names among `METRICS`: `"rouge_l"`, `"bleu"`,
                `"distinct_1"`, `"distinct_2"`, `"distinct_replies"`,
                `"self_bleu"`, `"mean_reply_length"` (see `score_replies`) and `"perplexity"` (of the references,
                teacher-forced). Defaults to ROUGE-L, BLEU and perplexity.
            seed: int. Resets the sampler first. Defaults to `None`.
            sampler: a sampler to reply with instead of the generator's
                (e.g. greedy for a generator that samples). Defaults to
                `None`.

        Returns:
            dict: each metric (float), `"replies"` (list of str) and
            `"reply_ids"` (int32 `(N, max_new_tokens)`; none of the two when
            only perplexity is asked for).
        """
        metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
        unknown = set(metrics) - set(METRICS)
        if not metrics or unknown:
            raise ValueError(f"metrics must be a non-empty subset of {METRICS}; got {metrics}.")
        rows, references = self.rows(data)
        results = {}
        text_metrics = [name for name in metrics if name in TEXT_METRICS]
        if text_metrics:
            reply_ids = self.generate_rows(rows, sampler=sampler, seed=seed)
            replies = detokenize_texts(self.tokenizer, reply_ids)
            results.update(score_replies(references, replies, text_metrics))
        if "perplexity" in metrics:
            results["perplexity"] = self.perplexity(rows)
        results = {name: results[name] for name in metrics}
        if text_metrics:
            results.update(replies=replies, reply_ids=reply_ids)
        return results

    @staticmethod
    def _distribute(array, strategy, replicas):
        """The array as a tensor, or one contiguous slice per replica in replica order."""
        if strategy is None:
            return tf.constant(array)
        per_replica = len(array) // replicas

        def value(context):
            start = context.replica_id_in_sync_group * per_replica
            return tf.constant(array[start : start + per_replica])

        return strategy.experimental_distribute_values_from_function(value)


def as_generator(policy, tokenizer=None, prompt_length=None, max_new_tokens=None, owner="This", **kwargs):
    """A `ResponseGenerator` from a generator, or from a policy and its settings.

    Args:
        policy: a `ResponseGenerator` (returned as it is), or a policy.
        tokenizer, prompt_length, max_new_tokens: needed with a policy; with
            a generator they must be `None` or equal its own.
        owner: str. The caller, named in error messages.
        **kwargs: more `ResponseGenerator` arguments, for a policy.
    """
    if isinstance(policy, ResponseGenerator):
        for name, value in (("tokenizer", tokenizer), ("prompt_length", prompt_length),
                            ("max_new_tokens", max_new_tokens)):
            own = getattr(policy, name)
            if value is not None and value is not own and value != own:
                raise ValueError(
                    f"{owner} was given a ResponseGenerator and {name}={value!r}, which differs from "
                    f"the generator's ({own!r}); pass the generator alone."
                )
        return policy
    missing = [n for n, v in (("tokenizer", tokenizer), ("prompt_length", prompt_length),
                              ("max_new_tokens", max_new_tokens)) if v is None]
    if missing:
        raise TypeError(f"{owner} needs a ResponseGenerator, or a policy with {', '.join(missing)}.")
    return ResponseGenerator(policy, tokenizer, prompt_length, max_new_tokens, **kwargs)


def unpack_generator(policy, prompt_length, max_new_tokens=None, owner="This", need_new_tokens=True):
    """`(policy, prompt_length, max_new_tokens)` from a `ResponseGenerator` or as given.

    What the trainers call, so that `ReinforceTrainer(generator, reward)`
    and `ReinforceTrainer(policy, reward, prompt_length, max_new_tokens)`
    are the same trainer. Lengths given with a generator must equal its own.
    """
    if isinstance(policy, ResponseGenerator):
        for name, value in (("prompt_length", prompt_length), ("max_new_tokens", max_new_tokens)):
            own = getattr(policy, name)
            if value is not None and value != own:
                raise ValueError(
                    f"{owner} was given a ResponseGenerator and {name}={value!r}, which differs from "
                    f"the generator's ({own!r}); pass the generator alone."
                )
        return policy.policy, policy.prompt_length, policy.max_new_tokens
    missing = [n for n, v in (("prompt_length", prompt_length), ("max_new_tokens", max_new_tokens))
               if v is None and (need_new_tokens or n == "prompt_length")]
    if missing:
        raise TypeError(f"{owner} needs a ResponseGenerator, or a policy with {' and '.join(missing)}.")
    return policy, prompt_length, max_new_tokens


def generate(policy, tokenizer, prompts, prompt_length=64, max_new_tokens=64, sampler="greedy", seed=None,
             **sampler_kwargs):
    """One-shot convenience around `ResponseGenerator`; returns a list of str."""
    generator = ResponseGenerator(policy, tokenizer, prompt_length, max_new_tokens, sampler, **sampler_kwargs)
    return generator(prompts, seed=seed)
