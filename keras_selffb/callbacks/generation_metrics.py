"""`GenerationMetrics`: ROUGE-L, BLEU and perplexity of generated replies, per epoch.

At the end of every n-th epoch the policy replies to each validation prompt;
the replies are scored by `keras_selffb.evaluation.score_replies` (mean
ROUGE-L F1 with the `cjk` segmentation; corpus BLEU, tokenization `13a`, or
`zh` when the references contain Chinese) and the references' teacher-forced
perplexity by `keras_selffb.evaluation.reference_statistics`, the same
numbers as `evaluate_policy` with a greedy sampler. They are written into the
epoch's `logs` as `val_rouge_l`, `val_bleu`, `val_perplexity`, so the
callbacks AFTER this one in the `callbacks` list (EarlyStopping,
ModelCheckpoint, CSVLogger, TensorBoard, the History) see them.

Under a distribution strategy with several replicas and a deterministic
sampler (greedy, beam), each batch of prompts is split evenly over the
replicas (the last one padded with copies of a row, dropped afterwards) and
run with `strategy.run`; the replies are gathered in order. A stochastic
sampler runs on one replica instead: one seeded random stream then gives the
same replies whatever the number of replicas.
"""

import warnings

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from keras_selffb.callbacks._common import resolve_policy
from keras_selffb.evaluation import TEXT_METRICS, reference_statistics, score_replies
from keras_selffb.models.generation import ResponseGenerator, generate_ids
from keras_selffb.text.packing import pack_pairs
from keras_selffb.text.tokenizer import detokenize_texts

METRICS = ("perplexity", "bleu", "rouge_l")
# Samplers without a random stream: their replies do not depend on how the
# prompts are split over replicas.
_DETERMINISTIC = (keras_hub.samplers.GreedySampler, keras_hub.samplers.BeamSampler)


class GenerationMetrics(keras.callbacks.Callback):
    """Scores generated validation replies at epoch end and logs the scores.

    Put it BEFORE EarlyStopping, ModelCheckpoint, CSVLogger and TensorBoard in
    the `callbacks` list: Keras calls callbacks in order on one `logs` dict.
    With `every_n_epochs > 1` the keys exist only in the scored epochs (and
    CSVLogger fixes its columns at the first epoch, so it misses them).

    Args:
        validation_data: list of `(prompt, reference)` str pairs, or packed
            int rows `(N, prompt_length + R)`, a NumPy array or tensor
            (`keras_selffb.text.pack_pairs`).
        tokenizer: the tokenizer of the policy.
        prompt_length: int. Prompt columns, BOS and SEP included.
        max_new_tokens: int. Longest reply, EOS included; also the reference
            length used for the perplexity of str pairs.
        metrics: names among `"perplexity"`, `"bleu"`, `"rouge_l"`.
            Defaults to all three.
        every_n_epochs: int. Score every n-th epoch. Defaults to `1`.
        sampler: str, dict or keras-hub sampler. Defaults to `"greedy"`.
        batch_size: int. Prompts generated at once (over all replicas).
            Defaults to `64`.
        prefix: str. Prepended to each metric name in `logs`. Defaults to
            `"val_"`.
        seed: int. The sampler's random state is reset to it before each
            scoring, so a stochastic sampler draws the same stream every
            epoch. Defaults to `0`.

    Example:

    ```python
    trainer = MLETrainer(policy, prompt_length=32)
    trainer.compile(optimizer="adam")
    scores = GenerationMetrics(validation_pairs, tokenizer, prompt_length=32, max_new_tokens=32)
    stop = keras.callbacks.EarlyStopping("val_rouge_l", mode="max", patience=3)
    trainer.fit(train_dataset, epochs=20, callbacks=[scores, stop])  # scores first
    ```
    """

    def __init__(
        self,
        validation_data,
        tokenizer,
        prompt_length,
        max_new_tokens,
        metrics=METRICS,
        every_n_epochs=1,
        sampler="greedy",
        batch_size=64,
        prefix="val_",
        seed=0,
    ):
        super().__init__()
        metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
        unknown = set(metrics) - set(METRICS)
        if not metrics or unknown:
            raise ValueError(f"metrics must be a non-empty subset of {METRICS}; got {metrics}.")
        for name, value in (("every_n_epochs", every_n_epochs), ("batch_size", batch_size),
                            ("max_new_tokens", max_new_tokens)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1; got {value}.")
        if len(validation_data) == 0:
            raise ValueError("validation_data is empty.")
        self.validation_data = validation_data
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.max_new_tokens = max_new_tokens
        self.metrics = metrics
        self.every_n_epochs = every_n_epochs
        self.sampler = sampler
        self.batch_size = batch_size
        self.prefix = prefix
        self.seed = seed
        # The last scores and replies, for inspection.
        self.results = {}
        self.replies = []
        self._built_for = None
        self._warned_overwrite = False

    # -- Keras hooks --------------------------------------------------------

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        self.results = self.evaluate()
        if logs is None:
            return
        for name, value in self.results.items():
            key = self.prefix + name
            if key in logs and not self._warned_overwrite:
                self._warned_overwrite = True
                warnings.warn(
                    f"GenerationMetrics overwrites logs[{key!r}] (already set, e.g. by "
                    "fit's validation_data); pass another prefix= to keep both.",
                    stacklevel=2,
                )
            logs[key] = value

    # -- scoring --------------------------------------------------------------

    def evaluate(self):
        """Generates and scores the validation replies now; dict name -> float."""
        self._build()
        results = {}
        text_metrics = tuple(name for name in self.metrics if name in TEXT_METRICS)
        if text_metrics:
            self._generator.reseed(self.seed)
            replies = []
            for rows, _, count in self._chunks():
                ids = self._generate(self._distribute(rows[:, : self.prompt_length]))
                replies.extend(detokenize_texts(self.tokenizer, ids[:count]))
            self.replies = replies
            results.update(score_replies(self._references, replies, text_metrics))
        if "perplexity" in self.metrics:
            total, tokens = 0.0, 0.0
            for rows, weights, _ in self._chunks():
                nll, count = self._statistics(self._distribute(rows), self._distribute(weights))
                total += float(nll)
                tokens += float(count)
            results["perplexity"] = float(np.exp(total / max(tokens, 1.0)))
        return {name: results[name] for name in self.metrics}

    def _build(self):
        """Packs the data and compiles the steps once per model."""
        if self._built_for is self.model:
            return
        policy = resolve_policy(self.model, "GenerationMetrics")
        # The generator checks the vocabulary and owns the seeded sampler.
        self._generator = ResponseGenerator(
            policy, self.tokenizer, self.prompt_length, self.max_new_tokens, self.sampler, seed=self.seed
        )
        self._rows, self._references = self._pack()
        sampler = self._generator.sampler
        strategy = getattr(self.model, "distribute_strategy", None)
        distributed = (
            strategy is not None and strategy.num_replicas_in_sync > 1 and isinstance(sampler, _DETERMINISTIC)
        )
        self._strategy = strategy if distributed else None
        self._replicas = strategy.num_replicas_in_sync if distributed else 1

        def generate(prompt_ids):
            return generate_ids(policy, prompt_ids, self.max_new_tokens, sampler)

        def statistics(rows, weights):
            return reference_statistics(policy, rows, self.prompt_length, weights)

        if distributed:
            self._generate = tf.function(
                lambda ids: strategy.gather(strategy.run(generate, args=(ids,)), axis=0)
            )
            self._statistics = tf.function(
                lambda rows, weights: strategy.reduce(
                    "SUM", strategy.run(statistics, args=(rows, weights)), axis=None
                )
            )
        else:
            self._generate = tf.function(generate)
            self._statistics = tf.function(statistics)
        self._built_for = self.model

    def _pack(self):
        """Packed int32 rows `(N, P + R)` and the reference strings."""
        data = self.validation_data
        if isinstance(data, tf.Tensor):
            data = data.numpy()
        if isinstance(data, np.ndarray) and data.dtype.kind in "iu":
            if data.ndim != 2 or data.shape[1] <= self.prompt_length:
                raise ValueError(
                    f"Packed validation rows must be (N, prompt_length + R) with R >= 1 "
                    f"(prompt_length={self.prompt_length}); got shape {data.shape}."
                )
            rows = data.astype("int32")
            return rows, detokenize_texts(self.tokenizer, rows[:, self.prompt_length :])
        pairs = [(prompt, reference) for prompt, reference in data]
        rows = pack_pairs(self.tokenizer, pairs, self.prompt_length, self.max_new_tokens, warn=False)
        return rows, [reference for _, reference in pairs]

    def _chunks(self):
        """Yields `(rows, weights, count)`: equal-size chunks of the packed rows.

        The size is a multiple of the number of replicas, so each replica
        gets the same number of rows; the last chunk is padded with copies
        of its last row, weight 0, and `count` says how many rows are real.
        """
        total = len(self._rows)
        size = -(-min(self.batch_size, total) // self._replicas) * self._replicas
        for start in range(0, total, size):
            rows = self._rows[start : start + size]
            count = len(rows)
            padding = size - count
            weights = np.concatenate([np.ones(count), np.zeros(padding)]).astype("float32")
            yield np.concatenate([rows, np.repeat(rows[-1:], padding, axis=0)]), weights, count

    def _distribute(self, array):
        """One contiguous slice of `array` per replica, in replica order."""
        if self._strategy is None:
            return tf.constant(array)
        per_replica = len(array) // self._replicas

        def value(context):
            start = context.replica_id_in_sync_group * per_replica
            return tf.constant(array[start : start + per_replica])

        return self._strategy.experimental_distribute_values_from_function(value)
