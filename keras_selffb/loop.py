"""`SelfFeedbackLoop`: generate -> self-evaluate -> adjust -> repeat.

The article's core idea (sections 3 and 4) as an object that runs rounds
until a target metric is met or the rounds run out. Each round:

(a) **generate** `num_samples` candidates for every training prompt with
    the current policy (seeded by the round);
(b) **score** them with any `Reward` (in-graph, or host Python through
    `PythonReward`, e.g. executing generated code);
(c) **adjust** the policy by one or more methods, in order:
    - `"filtered"`: filtered self-training (ReST, Gulcehre et al. 2023;
      RAFT, Dong et al. 2023): keep the candidates whose reward reaches the
      round's threshold and fine-tune on them, weighted by reward. The
      threshold rises: round r uses the `threshold_quantiles[r]` quantile of
      the round's rewards, never below the previous round's threshold;
    - `"rl"`: `ReinforceTrainer` for `rl_steps` steps (samples of its own);
    - `"contrastive"`: `ContrastiveTrainer` (sequence-likelihood) for
      `contrastive_steps` steps;
    - `"dpo"`: online / self-rewarding DPO: the best and the worst of each
      prompt's candidates (by reward; prompts whose candidates tie give no
      pair) are a (chosen, rejected) pair, and `DPOTrainer` trains on the
      round's pairs for `dpo_steps` steps, against a FIXED reference (the
      policy at the start of the loop, as TRL's online DPO keeps its
      reference model);
(d) **evaluate** with greedy replies on the validation pairs: the mean
    reward (`val_reward`) and, for text data, ROUGE-L, BLEU and perplexity
    (and any of the generator's `METRICS`: `eval_metrics`), plus a judge's
    retrieval accuracy when the loop has a `judge`.

**Collapse guard.** A reward paid against one reference per prompt can
move every prompt onto one generic reply while the metric rises (reward
hacking). With `min_distinct_fraction`, a round whose number of distinct
greedy validation replies falls below that fraction of the start's is
marked `collapsed`, ends the loop, and the policy goes back to the best
round (by `monitor`) that did not collapse.

Everything is checkpointed under `directory`: the policy after each round,
the scored candidates of the round in progress, and the adjust phase's
epochs (`fit_resumable`). A process killed at any point and started again
with the same arguments resumes where it stopped and ends with the same
numbers as an uninterrupted run (every random draw is derived from
`(seed, round, epoch)`, never from state lost in the crash).

A reward that raises is reported with the round, the batch and the reward's
name; the scored candidates of finished batches are not kept, but nothing
else is lost: fix the reward and run again to resume the round.
"""

import os
import re
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from keras_selffb.callbacks import RewardHistograms, TextSamples
from keras_selffb.generator import DEFAULT_METRICS, METRICS as GENERATOR_METRICS, ResponseGenerator, as_generator, fixed_batches
from keras_selffb.models.generation import get_sampler, reseed_sampler
from keras_selffb.models.judge import check_judge
from keras_selffb.models.policy_network import frozen_copy
from keras_selffb.text.packing import pack_pairs
from keras_selffb.text.tokenizer import NUM_RESERVED
from keras_selffb.training.checkpoint import (
    carry_trainer_state,
    epoch_order,
    fit_resumable,
    load_arrays,
    read_callback_state,
    read_json,
    reset_seed_generators,
    save_arrays,
    write_json,
)
from keras_selffb.training.contrastive_trainer import ContrastiveTrainer
from keras_selffb.training.dpo_trainer import DPOTrainer, check_dpo_settings
from keras_selffb.training.mle_trainer import MLETrainer, weighted_rows
from keras_selffb.training.reinforce_trainer import ReinforceTrainer

METHODS = ("filtered", "rl", "contrastive", "dpo")
# What `dpo_options` may set (the rest of `DPOTrainer`'s arguments come from the loop).
DPO_OPTIONS = ("beta", "loss_type", "label_smoothing", "reference_policy")
STATE_FILE = "loop_state.json"


class RewardError(RuntimeError):
    """A reward failed while scoring a round's candidates."""


def rising_thresholds(round_rewards, quantiles, floor=None):
    """The threshold of each round: a quantile of its rewards, never falling.

    `threshold_r = max(threshold_{r-1}, quantile(rewards_r, q_r))`, starting
    from `floor` (or -inf). The last quantile repeats for later rounds.

    Args:
        round_rewards: list of 1-D arrays, the candidates' rewards per round.
        quantiles: sequence of floats in [0, 1].
        floor: float or None. The lowest threshold allowed.

    Returns:
        list of float, one per round.

    Example:

    >>> rising_thresholds([[0, 1, 2, 3], [0, 0, 0, 1]], [0.5, 0.5])
    [1.5, 1.5]
    """
    thresholds, previous = [], -np.inf if floor is None else float(floor)
    for r, rewards in enumerate(round_rewards):
        q = quantiles[min(r, len(quantiles) - 1)]
        previous = max(previous, float(np.quantile(np.asarray(rewards, np.float64), q)))
        thresholds.append(previous)
    return thresholds


def filter_candidates(rewards, threshold, weighting="reward"):
    """Which candidates to keep and their training weights.

    Args:
        rewards: float array `[N]`.
        threshold: float. Candidates with `reward >= threshold` are kept.
        weighting: str. `"reward"`: weights proportional to the reward,
            scaled to mean 1 over the kept ones (candidates with a reward
            <= 0 would get weight 0 and are not kept); `"uniform"`: all 1.

    Returns:
        `(indices, weights)`: int array of kept positions, float32 weights.

    Example:

    >>> idx, w = filter_candidates(np.array([0.2, 0.9, 0.5]), 0.5)
    >>> idx.tolist(), w.dtype, [round(float(x), 3) for x in w]  # 0.9 / 0.7, 0.5 / 0.7
    ([1, 2], dtype('float32'), [1.286, 0.714])
    >>> filter_candidates(np.array([0.2, 0.9, 0.5]), 0.5, weighting="uniform")[1].tolist()
    [1.0, 1.0]
    """
    rewards = np.asarray(rewards, np.float64)
    if not np.all(np.isfinite(rewards)):
        raise ValueError("Rewards contain NaN or inf; cannot filter candidates.")
    if weighting not in ("reward", "uniform"):
        raise ValueError(f"Unknown weighting {weighting!r}; use 'reward' or 'uniform'.")
    kept = np.flatnonzero(rewards >= threshold)
    if weighting == "uniform":
        return kept, np.ones(kept.size, np.float32)
    kept = kept[rewards[kept] > 0]  # weight 0: nothing to learn from
    values = rewards[kept]
    weights = values / values.mean() if kept.size else values
    return kept, weights.astype(np.float32)


def preference_pairs(rewards, num_samples):
    """The (best, worst) candidate of each prompt whose candidates do not tie.

    Args:
        rewards: float array `[N * K]`, prompt-major (prompt `i`'s
            candidates are rows `i * K` to `i * K + K - 1`).
        num_samples: int. Candidates per prompt `K`.

    Returns:
        `(chosen, rejected)`: int arrays of candidate rows, one pair per
        prompt with `max > min` (the first best and the first worst on ties).

    Example:

    >>> chosen, rejected = preference_pairs(np.array([0.1, 0.9, 0.5, 0.3, 0.3, 0.3, 1.0, 0.0, 1.0]), 3)
    >>> chosen.tolist(), rejected.tolist()  # prompt 1's candidates tie: no pair
    ([1, 6], [0, 7])
    """
    rewards = np.asarray(rewards, np.float64)
    if num_samples < 2 or rewards.ndim != 1 or rewards.size % num_samples:
        raise ValueError(
            f"preference_pairs needs num_samples >= 2 and rewards [N * num_samples]; got "
            f"num_samples={num_samples}, shape {rewards.shape}."
        )
    groups = rewards.reshape(-1, num_samples)
    starts = np.arange(len(groups)) * num_samples
    best, worst = starts + groups.argmax(axis=1), starts + groups.argmin(axis=1)
    keep = groups.max(axis=1) > groups.min(axis=1)
    return best[keep], worst[keep]


class SelfFeedbackLoop:
    """Rounds of generate -> score -> adjust -> evaluate, resumable.

    With a `ResponseGenerator`, the first arguments are
    `SelfFeedbackLoop(generator, reward, train_pairs, validation_pairs, ...)`:
    the generator brings the policy, its tokenizer and the two lengths.

    Args:
        policy: a `PolicyNetwork` or `CausalLMPolicy` (e.g. after MLE),
            trained in place; or a `ResponseGenerator` (see above).
        tokenizer: its tokenizer.
        reward: a `keras_selffb.rewards.Reward`, used to score candidates,
            to train (`"rl"`, `"contrastive"`) and to evaluate.
        train_pairs: list of `(prompt, reference)` strings. The reference
            is handed to the reward (use `""` when the reward needs none).
        validation_pairs: list of `(prompt, reference)` for evaluation.
        prompt_length: int. Prompt columns, BOS and SEP included.
        max_new_tokens: int. Longest candidate, EOS included.
        methods: str or sequence of `"filtered"`, `"rl"`, `"contrastive"`,
            `"dpo"`, run in this order in every round. `"filtered"` and
            `"dpo"` learn from the candidates sampled at the start of the
            round. Defaults to `"filtered"`.
        rounds: int. Most rounds. Defaults to `3`.
        num_samples: int. Candidates per training prompt. Defaults to `4`.
        temperature: float. Sampling temperature. Defaults to `1.0`.
        threshold_quantiles: sequence of float. Quantile of the round's
            rewards used as its threshold (rising; see `rising_thresholds`).
            Defaults to `(0.5, 0.6, 0.7)`.
        min_reward: float or None. Candidates below it are never kept, in
            any round (e.g. `1.0` for pass/fail rewards). Defaults to `None`.
        weighting: str. `"reward"` or `"uniform"` weights for the kept
            candidates. Defaults to `"reward"`.
        keep_references: bool. Fine-tune on the reference pairs too (weight
            1), so the policy does not drift from the data; pairs with an
            empty reference are left out. Defaults to `True`.
        epochs_per_round: int. Fine-tuning epochs of `"filtered"`. Defaults to `1`.
        rl_steps: int. `"rl"` steps per round. Defaults to `40`.
        contrastive_steps: int. `"contrastive"` steps per round. Defaults to `40`.
        dpo_steps: int. `"dpo"` steps per round, of `rl_batch_size` pairs.
            Defaults to `40`.
        batch_size: int. Rows per fine-tuning step. Defaults to `32`.
        rl_batch_size: int. Prompts per RL / contrastive step. Defaults to `16`.
        learning_rate: float. Adam learning rate of `"filtered"`. Defaults to `1e-3`.
        rl_learning_rate: float. Adam learning rate of `"rl"`,
            `"contrastive"` and `"dpo"`. Defaults to `5e-4`.
        rl_options: dict. More `ReinforceTrainer` arguments (baseline,
            kl_coef, gamma, ...). A `kl_coef > 0` uses the policy as it was
            when the loop started as the frozen reference.
        contrastive_options: dict. More `ContrastiveTrainer` arguments.
        dpo_options: dict. `DPOTrainer`'s `beta`, `loss_type`,
            `label_smoothing` and `reference_policy` (default: the policy
            as it was when the loop started, frozen; the same in every round).
        monitor: str. The metric for the target and the best round.
            Defaults to `"val_reward"`.
        target: float or None. Stop after the first round whose `monitor`
            reaches it. Defaults to `None`.
        mode: str. `"max"` or `"min"` for `monitor`. Defaults to `"max"`.
        restore_best: bool. At the end, roll the policy back to the best
            round by `monitor` (round 0 = the start). Defaults to `False`.
        text_metrics: bool. Also compute ROUGE-L, BLEU and perplexity on
            the validation pairs. Defaults to `True`.
        eval_metrics: names among `ResponseGenerator.evaluate`'s metrics
            computed on the validation pairs with `text_metrics`. Defaults
            to ROUGE-L, BLEU and perplexity.
        judge: a `RelevanceJudge` or None. With one, every evaluation also
            reports `val_judge_retrieval_accuracy`: how often the frozen
            judge ranks a greedy reply's own prompt first among 20
            validation prompts (`training.retrieval_accuracy`).
        min_distinct_fraction: float in [0, 1]. The collapse guard (see
            above): 0 turns it off. Defaults to `0.0`.
        directory: str or None. Checkpoints and `history.json`; None keeps
            nothing on disk (and cannot resume).
        log_dir: str or None. Per-method `<method>_history.csv` and
            TensorBoard logs go here: `logs/<method>` (the fit logs, sample
            replies to 4 validation prompts with their rewards as text,
            reward/advantage histograms for `"rl"`) and `logs/rounds`
            (the round metrics, step = round).
        seed: int. Defaults to `0`.
        callbacks: Keras callbacks passed to every `fit` (e.g.
            `TensorBoard`, `GenerationMetrics`, `EarlyStopping`). They see
            one epoch axis across the rounds and keep their state from one
            round to the next (and across a resume), so `EarlyStopping`'s
            patience counts epochs of all rounds. When any of them sets
            `stop_training` (EarlyStopping, TerminateOnNaN, TargetReached),
            the round's remaining methods are skipped, the round is
            evaluated and saved, and the loop ends (`history[-1]["stopped"]`).
            A round that leaves NaN or inf weights is undone (the previous
            round's policy is kept; `history[-1]["diverged"]`) and ends the
            loop.
        carry_state: bool. Each method keeps one trainer for all rounds, so
            its optimizer (Adam's moments and step count), the adaptive KL
            coefficient and the moving-average baseline carry over from
            round to round, and across a resume. `False` builds a fresh
            trainer and optimizer every round. Defaults to `True`.
        score_batch_size: int. Rows per generation / scoring call.
            Defaults to `64`.
        verbose: passed to `fit`; 0 silences the round summaries too.
    """

    def __init__(
        self,
        policy,
        tokenizer=None,
        reward=None,
        train_pairs=None,
        validation_pairs=None,
        prompt_length=None,
        max_new_tokens=None,
        methods="filtered",
        rounds=3,
        num_samples=4,
        temperature=1.0,
        threshold_quantiles=(0.5, 0.6, 0.7),
        min_reward=None,
        weighting="reward",
        keep_references=True,
        epochs_per_round=1,
        rl_steps=40,
        contrastive_steps=40,
        dpo_steps=40,
        batch_size=32,
        rl_batch_size=16,
        learning_rate=1e-3,
        rl_learning_rate=5e-4,
        rl_options=None,
        contrastive_options=None,
        dpo_options=None,
        monitor="val_reward",
        target=None,
        mode="max",
        restore_best=False,
        text_metrics=True,
        eval_metrics=DEFAULT_METRICS,
        judge=None,
        min_distinct_fraction=0.0,
        directory=None,
        log_dir=None,
        seed=0,
        callbacks=(),
        carry_state=True,
        score_batch_size=64,
        verbose="auto",
    ):
        if isinstance(policy, ResponseGenerator) and tokenizer is not None and not hasattr(tokenizer, "vocabulary_size"):
            # SelfFeedbackLoop(generator, reward, train_pairs, validation_pairs, ...)
            if validation_pairs is not None or prompt_length is not None or max_new_tokens is not None:
                raise TypeError(
                    "SelfFeedbackLoop(generator, reward, train_pairs, validation_pairs, ...): with a "
                    "ResponseGenerator, pass no tokenizer or lengths (the generator has them)."
                )
            tokenizer, reward, train_pairs, validation_pairs = None, tokenizer, reward, train_pairs
        generator = as_generator(
            policy, tokenizer, prompt_length, max_new_tokens, owner="SelfFeedbackLoop", batch_size=score_batch_size
        )
        policy, tokenizer = generator.policy, generator.tokenizer
        prompt_length, max_new_tokens = generator.prompt_length, generator.max_new_tokens
        if reward is None:
            raise TypeError("SelfFeedbackLoop needs a reward (a keras_selffb.rewards.Reward).")
        methods = (methods,) if isinstance(methods, str) else tuple(methods)
        unknown = [m for m in methods if m not in METHODS]
        if not methods or unknown:
            raise ValueError(f"Unknown loop method(s) {unknown or methods}; choose from {METHODS}.")
        if not train_pairs:
            raise ValueError("SelfFeedbackLoop needs training pairs; got none.")
        if not validation_pairs:
            raise ValueError("SelfFeedbackLoop needs validation pairs to evaluate rounds; got none.")
        if rounds < 1 or num_samples < 1:
            raise ValueError(f"rounds and num_samples must be >= 1; got {rounds}, {num_samples}.")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min'; got {mode!r}.")
        eval_metrics = tuple(eval_metrics)
        if min_distinct_fraction and "distinct_replies" not in eval_metrics:
            eval_metrics += ("distinct_replies",)
        unknown = sorted(set(eval_metrics) - set(GENERATOR_METRICS))
        if not eval_metrics or unknown:
            raise ValueError(f"eval_metrics must be names among {GENERATOR_METRICS}; got {list(eval_metrics)}.")
        if not 0.0 <= min_distinct_fraction <= 1.0:
            raise ValueError(f"min_distinct_fraction must be in [0, 1]; got {min_distinct_fraction!r}.")
        if min_distinct_fraction and not text_metrics:
            raise ValueError("min_distinct_fraction counts distinct replies, which needs text_metrics=True.")
        if judge is not None:
            check_judge(judge, "SelfFeedbackLoop's judge")
        if not threshold_quantiles or not all(0.0 <= q <= 1.0 for q in threshold_quantiles):
            raise ValueError(f"threshold_quantiles must be in [0, 1]; got {threshold_quantiles}.")
        dpo_options = dict(dpo_options or {})
        if "dpo" in methods:
            unknown = sorted(set(dpo_options) - set(DPO_OPTIONS))
            if unknown:
                raise ValueError(f"Unknown dpo_options {unknown}; the loop's DPO takes {list(DPO_OPTIONS)}.")
            check_dpo_settings(**{k: v for k, v in dpo_options.items() if k != "reference_policy"})
            if num_samples < 2 or dpo_steps < 1:
                raise ValueError(
                    f"The 'dpo' method needs num_samples >= 2 (a best and a worst candidate) and "
                    f"dpo_steps >= 1; got num_samples={num_samples}, dpo_steps={dpo_steps}."
                )
        self.generator = generator
        self.policy = policy
        self.tokenizer = tokenizer
        self.reward = reward
        self.prompt_length = prompt_length
        self.max_new_tokens = max_new_tokens
        self.methods = methods
        self.rounds = rounds
        self.num_samples = num_samples
        self.temperature = temperature
        self.threshold_quantiles = tuple(threshold_quantiles)
        self.min_reward = min_reward
        self.weighting = weighting
        self.keep_references = keep_references
        self.epochs_per_round = epochs_per_round
        self.rl_steps = rl_steps
        self.contrastive_steps = contrastive_steps
        self.dpo_steps = dpo_steps
        self.batch_size = batch_size
        self.rl_batch_size = rl_batch_size
        self.learning_rate = learning_rate
        self.rl_learning_rate = rl_learning_rate
        self.rl_options = dict(rl_options or {})
        self.contrastive_options = dict(contrastive_options or {})
        self.dpo_options = dpo_options
        self.monitor = monitor
        self.target = target
        self.mode = mode
        self.restore_best = restore_best
        self.text_metrics = text_metrics
        self.eval_metrics = eval_metrics
        self.judge = judge
        self.min_distinct_fraction = float(min_distinct_fraction)
        self.directory = directory
        self.log_dir = log_dir
        self.seed = seed
        self.callbacks = list(callbacks)
        self.carry_state = carry_state
        self._trainers = {}
        self._callback_state = None
        self._stopped = False
        self.score_batch_size = score_batch_size
        self.verbose = verbose
        self.train_pairs = list(train_pairs)
        self.validation_pairs = list(validation_pairs)
        self.train_packed = pack_pairs(tokenizer, self.train_pairs, prompt_length, max_new_tokens, warn=False)
        self.validation_packed = pack_pairs(
            tokenizer, self.validation_pairs, prompt_length, max_new_tokens, warn=False
        )
        self.history = []
        self._sampler = get_sampler("random", temperature=temperature, seed=seed)
        self._greedy = get_sampler("greedy")
        self._score = tf.function(self._score_fn)
        self._reference = None

    # -- (a) generate and (b) score ---------------------------------------

    def _score_fn(self, prompts, candidates, references):
        return self.reward(prompts, candidates, references)

    def generate(self, packed, num_samples=1, greedy=True, seed=None):
        """Candidates for packed rows: `(candidates, rows)`.

        `candidates`: int32 `[N * num_samples, max_new_tokens]`, greedy or
        sampled at the loop's temperature (`seed` resets the sampler);
        `rows`: the packed rows repeated to match, prompt-major
        (`num_samples` in a row per prompt).
        """
        rows = np.repeat(np.asarray(packed, np.int32), num_samples, axis=0)
        sampler = self._greedy if greedy else self._sampler
        return self.generator.generate_rows(rows, sampler=sampler, seed=seed), rows

    def score(self, rows, candidates, round_index=None):
        """The reward of each candidate for its packed row: float `[N]`.

        Raises:
            RewardError: naming the round, the batch and the reward, when
                the reward raises or returns NaN/inf.
        """
        name = getattr(self.reward, "name", type(self.reward).__name__)
        where = "evaluation" if round_index is None else f"round {round_index}"
        values = []
        size = self.score_batch_size
        for start, (packed, cands), real in fixed_batches([rows, candidates], size):
            batch = start // size
            try:
                value = self._score(
                    tf.constant(packed[:, : self.prompt_length]),
                    tf.constant(cands),
                    tf.constant(packed[:, self.prompt_length :]),
                ).numpy()[:real]
            except Exception as e:  # noqa: BLE001 - re-raised with context
                raise RewardError(
                    f"{where}, batch {batch} (rows {batch * size}-{batch * size + real - 1}): "
                    f"reward {name!r} raised {_root_message(e)}"
                ) from e
            if not np.all(np.isfinite(value)):
                bad = int(np.flatnonzero(~np.isfinite(value))[0]) + batch * size
                raise RewardError(f"{where}, batch {batch}: reward {name!r} returned NaN or inf (row {bad}).")
            values.append(value)
        return np.concatenate(values)

    # -- (d) evaluate -----------------------------------------------------

    def evaluate(self):
        """Greedy replies on the validation pairs: `val_reward` (+ text metrics).

        With `text_metrics`, the replies come from the generator's
        `evaluate` (ROUGE-L, BLEU, perplexity: the package's one evaluation
        path) and the same replies are scored by the reward, so nothing is
        generated twice.
        """
        if self.text_metrics:
            results = self.generator.evaluate(self.validation_pairs, metrics=self.eval_metrics, sampler=self._greedy)
            candidates = results.pop("reply_ids")
            results.pop("replies")
            metrics = {"val_reward": float(np.mean(self.score(self.validation_packed, candidates)))}
            metrics.update({f"val_{k}": v for k, v in results.items()})
        else:
            candidates, rows = self.generate(self.validation_packed, 1, greedy=True)
            metrics = {"val_reward": float(np.mean(self.score(rows, candidates)))}
        if self.judge is not None:
            from keras_selffb.training.judge_training import retrieval_accuracy

            metrics["val_judge_retrieval_accuracy"] = float(
                retrieval_accuracy(self.judge, self.validation_packed[:, : self.prompt_length], candidates)
            )
        return metrics

    def _collapsed(self, metrics):
        """True when the round's distinct replies fell below the guard's floor."""
        if not self.min_distinct_fraction:
            return False
        floor = self.min_distinct_fraction * self.history[0]["metrics"]["val_distinct_replies"]
        return metrics["val_distinct_replies"] < floor

    # -- (c) adjust -------------------------------------------------------

    def _round_dir(self, round_index, *parts):
        return os.path.join(self.directory, f"round_{round_index}", *parts) if self.directory else None

    def _candidates(self, round_index):
        """This round's scored candidates, from disk when already made."""
        path = self._round_dir(round_index, "candidates.npz")
        if path and os.path.exists(path):
            with np.load(path) as data:
                return data["rows"], data["candidates"], data["rewards"]
        candidates, rows = self.generate(
            self.train_packed, self.num_samples, greedy=False, seed=self.seed * 1000 + round_index
        )
        rewards = self.score(rows, candidates, round_index)
        if path:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = path + ".tmp.npz"
            np.savez(tmp, rows=rows, candidates=candidates, rewards=rewards)
            os.replace(tmp, path)
        return rows, candidates, rewards

    def _method_callbacks(self, method, trainer):
        callbacks = list(self.callbacks)
        if self.log_dir:
            logs = os.path.join(self.log_dir, "logs", method)
            samples = self.validation_pairs[:4]
            callbacks += [
                keras.callbacks.TensorBoard(logs),
                TextSamples([p for p, _ in samples], self.tokenizer, logs, self.prompt_length,
                            self.max_new_tokens, reward=self.reward, references=[r for _, r in samples],
                            seed=self.seed),
            ]
            if method == "rl":
                callbacks.append(RewardHistograms(logs, every_n_steps=5))
        return callbacks + [_BatchTracker()]

    def _trainer(self, method, round_index, build):
        """The method's trainer: one for all rounds with `carry_state`.

        A trainer built anew at a later round (the process was restarted)
        takes its optimizer and own state from the method's last finished
        round, so a resumed loop goes on exactly as an uninterrupted one.
        """
        if self.carry_state and method in self._trainers:
            return self._trainers[method]
        trainer = build()
        if self.carry_state:
            self._trainers[method] = trainer
            for previous in range(round_index - 1, 0, -1):
                directory = self._round_dir(previous, method)
                if directory and carry_trainer_state(directory, trainer):
                    break
        return trainer

    def _fit(self, trainer, round_index, method, epoch_data, epochs, steps_per_epoch=None, reseed=None):
        callbacks = self._method_callbacks(method, trainer)
        options = dict(
            steps_per_epoch=steps_per_epoch, callbacks=callbacks, on_epoch_begin=reseed,
            epoch_offset=(round_index - 1) * epochs, verbose=self.verbose,
            csv_path=os.path.join(self.log_dir, f"{method}_history.csv") if self.log_dir else None,
            callback_state=self._callback_state,
        )
        try:
            directory = self._round_dir(round_index, method)
            if directory is not None:
                result = fit_resumable(trainer, epoch_data, epochs, directory, **options)
            else:
                with tempfile.TemporaryDirectory() as tmp:  # no checkpoints kept
                    result = fit_resumable(trainer, epoch_data, epochs, tmp, **options)
            self._callback_state = result["callback_state"]
            self._stopped = self._stopped or result["stopped"]
            return result
        except tf.errors.InvalidArgumentError as e:
            if "Reward component" not in str(e) and "PythonReward" not in str(e):
                raise
            name = getattr(self.reward, "name", type(self.reward).__name__)
            raise RewardError(
                f"round {round_index}, {method} batch {callbacks[-1].batch}: reward {name!r} failed: "
                f"{_root_message(e)}"
            ) from e

    def _filtered(self, round_index, rows, candidates, rewards, threshold):
        # `threshold` is never below `min_reward` (the first round's floor).
        kept, weights = filter_candidates(rewards, threshold, self.weighting)
        new_rows = np.concatenate([rows[kept, : self.prompt_length], candidates[kept]], axis=1)
        # Duplicates (the same reply sampled twice) are kept once.
        _, unique = np.unique(new_rows, axis=0, return_index=True)
        unique = np.sort(unique)
        new_rows, weights = new_rows[unique], weights[unique]
        if self.keep_references:
            # Pairs without a reference text (reward-only tasks) add nothing.
            references = self.train_packed[(self.train_packed[:, self.prompt_length:] >= NUM_RESERVED).any(axis=1)]
            new_rows = np.concatenate([new_rows, references])
            weights = np.concatenate([weights, np.ones(len(references), np.float32)])
        info = {"kept": int(len(unique)), "trained_rows": int(len(new_rows))}
        if len(new_rows) == 0:
            return {**info, "skipped": "no candidate reached the threshold"}
        def build():
            trainer = MLETrainer(self.policy, self.prompt_length)
            trainer.compile(optimizer=keras.optimizers.Adam(self.learning_rate, clipnorm=1.0))
            return trainer

        trainer = self._trainer("filtered", round_index, build)

        def epoch_data(epoch):
            order = epoch_order(len(new_rows), self.seed * 1000 + round_index, epoch)
            # One tensor per batch (not a dict): MultiWorker fit needs it.
            data = weighted_rows(new_rows[order], weights[order])
            return tf.data.Dataset.from_tensor_slices(data).batch(self.batch_size)

        result = self._fit(trainer, round_index, "filtered", epoch_data, self.epochs_per_round)
        return {**info, "loss": result["history"]["loss"][-1]}

    def _stream(self, round_index, epoch, method):
        """RL / contrastive data: shuffled training rows, seeded by round and epoch."""
        salt = {"rl": 1, "contrastive": 2}[method]  # "dpo" uses 3 (`_dpo`)
        order = epoch_order(len(self.train_packed), (self.seed * 1000 + round_index) * 10 + salt, epoch)
        rows = self.train_packed[order].astype(np.int32)
        return tf.data.Dataset.from_tensor_slices(rows).repeat().batch(self.rl_batch_size, drop_remainder=True)

    @staticmethod
    def _chunks(steps):
        """Splits `steps` into checkpointed epochs of about 10 steps."""
        epochs = max(1, round(steps / 10))
        return epochs, int(np.ceil(steps / epochs))

    def _reseeder(self, trainer, round_index):
        def reseed(epoch):
            reseed_sampler(trainer.sampler, (self.seed * 1000 + round_index) * 1000 + epoch, stream=1)

        return reseed

    def _reference_policy(self):
        if self._reference is None:
            self._reference = frozen_copy(self.policy)
            if self.directory and os.path.exists(os.path.join(self.directory, "round_0.npz")):
                load_arrays(os.path.join(self.directory, "round_0.npz"), self._reference.weights, "policy")
        return self._reference

    def _rl(self, round_index):
        options = {"num_samples": self.num_samples, "temperature": self.temperature, **self.rl_options}
        if options.get("kl_coef", 0.0) > 0 or options.get("target_kl") is not None:
            options.setdefault("reference_policy", self._reference_policy())

        def build():
            trainer = ReinforceTrainer(
                self.policy, self.reward, self.prompt_length, self.max_new_tokens, seed=self.seed, **options
            )
            trainer.compile(optimizer=keras.optimizers.Adam(self.rl_learning_rate, clipnorm=1.0))
            return trainer

        trainer = self._trainer("rl", round_index, build)
        epochs, steps = self._chunks(self.rl_steps)
        result = self._fit(
            trainer, round_index, "rl", lambda e: self._stream(round_index, e, "rl"), epochs,
            steps_per_epoch=steps, reseed=self._reseeder(trainer, round_index),
        )
        return {"steps": epochs * steps, "reward": result["history"]["reward"][-1]}

    def _contrastive(self, round_index):
        options = {"mode": "sequence_likelihood", "rank_weight": 1.0, "mle_weight": 1.0,
                   "temperature": 0.7, "num_samples": self.num_samples, **self.contrastive_options}

        def build():
            trainer = ContrastiveTrainer(
                self.policy, self.prompt_length, self.max_new_tokens, ranking_fn=self.reward,
                seed=self.seed, **options,
            )
            trainer.compile(optimizer=keras.optimizers.Adam(self.rl_learning_rate, clipnorm=1.0))
            return trainer

        trainer = self._trainer("contrastive", round_index, build)
        epochs, steps = self._chunks(self.contrastive_steps)
        result = self._fit(
            trainer, round_index, "contrastive", lambda e: self._stream(round_index, e, "contrastive"),
            epochs, steps_per_epoch=steps, reseed=self._reseeder(trainer, round_index),
        )
        return {"steps": epochs * steps, "loss": result["history"]["loss"][-1]}

    def _dpo(self, round_index, rows, candidates, rewards):
        """One round of DPO on the (best, worst) candidate pairs of the round."""
        chosen, rejected = preference_pairs(rewards, self.num_samples)
        info = {"pairs": int(len(chosen))}
        if not len(chosen):
            return {**info, "skipped": "every prompt's candidates tie"}
        pairs = np.concatenate([rows[chosen, : self.prompt_length], candidates[chosen], candidates[rejected]],
                               axis=1).astype(np.int32)
        options = dict(self.dpo_options)
        # The loop's first policy, fixed for all rounds (TRL's online DPO keeps
        # its reference model too); not the previous round's policy.
        reference = options.pop("reference_policy", None)
        if reference is None:
            reference = self._reference_policy()

        def build():
            trainer = DPOTrainer(self.policy, self.prompt_length, self.max_new_tokens,
                                 reference_policy=reference, **options)
            trainer.compile(optimizer=keras.optimizers.Adam(self.rl_learning_rate, clipnorm=1.0))
            return trainer

        trainer = self._trainer("dpo", round_index, build)

        def epoch_data(epoch):
            order = epoch_order(len(pairs), (self.seed * 1000 + round_index) * 10 + 3, epoch)
            dataset = tf.data.Dataset.from_tensor_slices(pairs[order]).repeat()
            return dataset.batch(self.rl_batch_size, drop_remainder=True)

        epochs, steps = self._chunks(self.dpo_steps)
        result = self._fit(trainer, round_index, "dpo", epoch_data, epochs, steps_per_epoch=steps)
        history = result["history"]
        return {**info, "steps": epochs * steps, "loss": history["loss"][-1],
                "margin": history["rewards/margins"][-1], "accuracy": history["rewards/accuracies"][-1]}

    # -- the loop ---------------------------------------------------------

    def _met(self, value):
        if self.target is None:
            return False
        return value >= self.target if self.mode == "max" else value <= self.target

    def _save_state(self, thresholds):
        if self.directory:
            write_json(os.path.join(self.directory, STATE_FILE), {
                "rounds_done": len(self.history) - 1, "history": self.history, "thresholds": thresholds,
                "stopped": self._stopped,
            })
            write_json(os.path.join(self.directory, "history.json"), self.history)

    def _summarise(self, record):
        """Round metrics as TensorBoard scalars at step = round."""
        if not self.log_dir:
            return
        writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "logs", "rounds"))
        with writer.as_default():
            for key, value in record["metrics"].items():
                tf.summary.scalar(f"round/{key}", value, step=record["round"])
            for key in ("threshold", "candidate_reward_mean"):
                if key in record:
                    tf.summary.scalar(f"round/{key}", record[key], step=record["round"])
        writer.close()

    def _log(self, message):
        if self.verbose != 0:
            print(message, flush=True)

    def run(self):
        """Runs (or resumes) the rounds; returns `history`, a list of dicts.

        `history[0]` is the start (round 0: evaluation only); each later
        entry has `round`, `metrics`, `threshold`, `candidates`,
        `candidate_reward_mean`, the adjust methods' figures and `seconds`.
        """
        state = {}
        if self.directory:
            os.makedirs(self.directory, exist_ok=True)
            state = read_json(os.path.join(self.directory, STATE_FILE), {}) or {}
        self.history = list(state.get("history", []))
        thresholds = list(state.get("thresholds", []))
        self._stopped = bool(state.get("stopped", False))
        if self.history:
            done = len(self.history) - 1
            load_arrays(os.path.join(self.directory, f"round_{done}.npz"), self.policy.weights, "policy")
            for method in reversed(self.methods):  # the callbacks' state after round `done`
                directory = self._round_dir(done, method)
                if done and os.path.exists(os.path.join(directory, "state.json")):
                    self._callback_state = read_callback_state(directory)
                    break
            self._log(f"SelfFeedbackLoop: resuming after round {done} of {self.rounds}")
        else:
            start = time.perf_counter()
            metrics = self.evaluate()
            self.history.append({"round": 0, "metrics": metrics, "seconds": round(time.perf_counter() - start, 1)})
            if self.directory:
                save_arrays(os.path.join(self.directory, "round_0.npz"), self.policy.weights)
            self._save_state(thresholds)
            self._summarise(self.history[0])
            self._log(f"round 0 (start): {_format(metrics)}")
        while (len(self.history) - 1 < self.rounds and not self._stopped
               and not self._met(self.history[-1]["metrics"][self.monitor])):
            round_index = len(self.history)
            start = time.perf_counter()
            # Keras-level randomness (dropout) restarts from the round's seed,
            # so a resumed round draws what an uninterrupted one draws.
            keras.utils.set_random_seed(self.seed * 1000 + round_index)
            reset_seed_generators(self.policy, self.seed * 1000 + round_index)
            record = {"round": round_index}
            before = [w.numpy() for w in self.policy.weights]  # the previous round's policy
            if "filtered" in self.methods or "dpo" in self.methods:
                rows, candidates, rewards = self._candidates(round_index)
                record.update(candidates=int(len(rewards)), candidate_reward_mean=float(rewards.mean()))
            if "filtered" in self.methods:
                quantile = self.threshold_quantiles[min(round_index - 1, len(self.threshold_quantiles) - 1)]
                floor = thresholds[round_index - 2] if round_index > 1 else self.min_reward
                threshold = rising_thresholds([rewards], [quantile], floor=floor)[0]
                thresholds = thresholds[: round_index - 1] + [threshold]
                record["threshold"] = threshold
            for method in self.methods:
                if self._stopped:  # a callback stopped training: skip the rest
                    break
                if method == "filtered":
                    record["filtered"] = self._filtered(round_index, rows, candidates, rewards, threshold)
                elif method == "rl":
                    record["rl"] = self._rl(round_index)
                elif method == "dpo":
                    record["dpo"] = self._dpo(round_index, rows, candidates, rewards)
                else:
                    record["contrastive"] = self._contrastive(round_index)
            if self._stopped:
                record["stopped"] = True
            if not all(np.isfinite(w.numpy()).all() for w in self.policy.weights):
                # Diverged (TerminateOnNaN stopped it, or the round ended on
                # NaN weights): keep the previous round's policy, and stop.
                for weight, value in zip(self.policy.weights, before):
                    weight.assign(value)
                record.update(diverged=True, stopped=True)
                self._stopped = True
            record["metrics"] = self.evaluate()
            if self._collapsed(record["metrics"]):
                record.update(collapsed=True, stopped=True)
                self._stopped = True
            record["seconds"] = round(time.perf_counter() - start, 1)
            if self.directory:
                save_arrays(os.path.join(self.directory, f"round_{round_index}.npz"), self.policy.weights)
            self.history.append(record)
            self._save_state(thresholds)
            self._summarise(record)
            self._log(f"round {round_index}: {_format(record['metrics'])}"
                      + (f"  threshold {record['threshold']:.4f}, kept {record['filtered']['kept']}"
                         if "filtered" in record else ""))
        if self._stopped:
            last = self.history[-1]
            if last.get("diverged"):
                why = "the policy diverged (NaN weights); it is back to the previous round's"
            elif last.get("collapsed"):
                why = (f"the replies collapsed ({last['metrics']['val_distinct_replies']:.0f} distinct greedy "
                       f"validation replies, below {self.min_distinct_fraction:g} x the start's "
                       f"{self.history[0]['metrics']['val_distinct_replies']:.0f})")
            else:
                why = "a callback stopped training"
            self._log(f"SelfFeedbackLoop: stopped in round {last['round']}: {why}")
        if self.restore_best or any(h.get("collapsed") for h in self.history):
            self._roll_back()
        return self.history

    def best_round(self):
        """The round whose `monitor` is best (the first of ties), among those that did not collapse."""
        sign = 1.0 if self.mode == "max" else -1.0
        values = [-np.inf if h.get("collapsed") else sign * h["metrics"][self.monitor] for h in self.history]
        return int(np.argmax(values))

    def _roll_back(self):
        best = self.best_round()
        if best != len(self.history) - 1:
            if not self.directory:
                raise ValueError("restore_best needs a directory (the rounds' weights are kept there).")
            load_arrays(os.path.join(self.directory, f"round_{best}.npz"), self.policy.weights, "policy")
            self._log(f"SelfFeedbackLoop: rolled back to round {best} (best {self.monitor})")


class _BatchTracker(keras.callbacks.Callback):
    """Remembers the batch in progress, for error messages."""

    batch = 0

    def on_train_batch_begin(self, batch, logs=None):
        self.batch = batch


_ERROR_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$")


def _root_message(error):
    """`"ValueError: the judge is down"` out of TensorFlow's wrapped message.

    A host-Python reward's exception reaches us as an `InvalidArgumentError`
    ("Graph execution error: ...") with the original `Type: message` line
    buried in it; a NaN check's message is its own first line.
    """
    text = str(error)
    if isinstance(error, tf.errors.OpError):
        for line in text.splitlines():
            match = _ERROR_LINE.match(line)
            if match:
                return f"{match.group(1)}: {match.group(2)}"
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        for line in lines:  # e.g. "Reward component 'x' returned NaN or inf : Tensor had NaN values"
            if "Reward component" in line or "PythonReward" in line:
                return line
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def _format(metrics):
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
