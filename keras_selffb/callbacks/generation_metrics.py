"""`GenerationMetrics`: ROUGE-L, BLEU and perplexity of generated replies, per epoch.

At the end of every n-th epoch the policy replies to each validation prompt;
the replies are scored by `ResponseGenerator.evaluate`, the package's one
evaluation path (mean ROUGE-L F1 with the `cjk` segmentation; corpus BLEU,
tokenization `13a`, or `zh` when the references contain Chinese; the
references' teacher-forced perplexity), the same numbers as
`evaluate_policy` with a greedy sampler. They are written into the
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

from keras_selffb.callbacks._common import resolve_policy
from keras_selffb.generator import METRICS as GENERATOR_METRICS
from keras_selffb.generator import ResponseGenerator, as_generator

METRICS = ("perplexity", "bleu", "rouge_l")


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
        tokenizer: the tokenizer of the policy, or a `ResponseGenerator`
            (then its tokenizer, lengths, sampler and batch size are used,
            and `prompt_length`, `max_new_tokens` may be left out; the
            policy scored is always the one the callback's model trains).
        prompt_length: int. Prompt columns, BOS and SEP included.
        max_new_tokens: int. Longest reply, EOS included; also the reference
            length used for the perplexity of str pairs.
        metrics: names among `keras_selffb.generator.METRICS`
            (`"perplexity"`, `"bleu"`, `"rouge_l"`, `"distinct_1"`,
            `"distinct_2"`, `"distinct_replies"`, `"self_bleu"`,
            `"mean_reply_length"`). Defaults to the first three.
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
        prompt_length=None,
        max_new_tokens=None,
        metrics=METRICS,
        every_n_epochs=1,
        sampler="greedy",
        batch_size=64,
        prefix="val_",
        seed=0,
    ):
        super().__init__()
        if isinstance(tokenizer, ResponseGenerator):
            generator = as_generator(tokenizer, None, prompt_length, max_new_tokens, owner="GenerationMetrics")
            tokenizer, prompt_length, max_new_tokens = (
                generator.tokenizer, generator.prompt_length, generator.max_new_tokens
            )
            sampler, batch_size = generator.sampler, generator.batch_size
        elif prompt_length is None or max_new_tokens is None:
            raise TypeError(
                "GenerationMetrics needs a ResponseGenerator, or a tokenizer with prompt_length and max_new_tokens."
            )
        metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
        unknown = set(metrics) - set(GENERATOR_METRICS)
        if not metrics or unknown:
            raise ValueError(f"metrics must be a non-empty subset of {GENERATOR_METRICS}; got {metrics}.")
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
        self._rows = None
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
        results = self._generator.evaluate(self._rows, self.metrics, seed=self.seed)
        self.replies = results.pop("replies", self.replies)
        results.pop("reply_ids", None)
        return results

    def _build(self):
        """Builds the generator for the model's policy, once per model."""
        if self._built_for is self.model:
            return
        policy = resolve_policy(self.model, "GenerationMetrics")
        # The generator checks the vocabulary, owns the seeded sampler and,
        # under a strategy with several replicas and a deterministic
        # sampler, splits each batch over the replicas.
        self._generator = ResponseGenerator(
            policy, self.tokenizer, self.prompt_length, self.max_new_tokens, self.sampler,
            batch_size=self.batch_size, strategy=getattr(self.model, "distribute_strategy", None), seed=self.seed,
        )
        if self._rows is None:
            self._rows, _ = self._generator.rows(self.validation_data)
        self._built_for = self.model
