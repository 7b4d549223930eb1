"""`ContrastiveTrainer`: contrastive self-feedback as a Keras `train_step`.

The article's sections 3.2 / 4.2 made to learn. Per batch of packed
(prompt, reference) rows:

1. sample K candidates per prompt with a keras-hub sampler (no gradient),
   or take precomputed ones (`fit(packed, candidates)`);
2. score them with a ranking function (any `keras_selffb.rewards.Reward`;
   ROUGE-L F against the reference by default);
3. learn to tell the good candidates from the bad, in one of two modes:

   - `"encoder"` (the article's formula): the best and worst candidates of
     each prompt are the positive x+ and negative x-, the anchor x is the
     reference (or the source), and an `LLMEncoder` is trained on
     `L = 1/N sum [d(x, x+) + max(0, m - d(x, x-))]`, `d` a feature distance;
   - `"sequence_likelihood"` (BRIO, Liu et al. 2022; SLiC, Zhao et al.
     2022): the POLICY is trained so that its length-normalised
     log-likelihood ranks the candidates as the ranking function does,
     `L = rank_weight * L_rank + mle_weight * L_mle(reference)`.

Groups whose candidates all score within `min_score_gap` of each other
give no pair; they are skipped and counted (`skipped_groups`). Every mean
is over the GLOBAL batch (counts all-reduced in ONE collective that feeds
the loss), so one step on N replicas equals one step on one device.
"""

import keras
import tensorflow as tf

from keras_selffb.generator import unpack_generator
from keras_selffb.models.generation import get_sampler, sample_candidates, special_token_bias
from keras_selffb.rewards.rouge_l_reward import RougeLReward
from keras_selffb.training.contrastive import (
    check_distance,
    check_margin,
    check_score_gap,
    feature_distance,
    margin_loss,
    rank_order,
    ranking_loss_terms,
    select_pairs,
    skipped_groups,
)
from keras_selffb.training.losses import global_sum, response_token_nll, split_packed
from keras_selffb.training.trackers import RatioTracker, step_logs

MODES = ("encoder", "sequence_likelihood")
ANCHORS = ("reference", "source")
# Mode defaults for `margin=None`. Cosine distances lie in [0, 2]: a
# negative at 0.5 or more from the anchor costs nothing. BRIO's margin is
# per step of rank distance on log-likelihoods per token (CNN/DM and XSum).
DEFAULT_MARGINS = {"encoder": 0.5, "sequence_likelihood": 0.001}


def _shape3(ids):
    """`(rows, count, length)` of a rank-3 tensor, static where known."""
    dynamic = tf.shape(ids)
    return tuple(dim if dim is not None else dynamic[i] for i, dim in enumerate(ids.shape))


def _batch_size(ids):
    """The static batch size if known (for early errors), else the dynamic one."""
    return ids.shape[0] if ids.shape[0] is not None else tf.shape(ids)[0]


class ContrastiveTrainer(keras.Model):
    """Trains an encoder or a policy to rank the policy's own candidates.

    Args:
        policy: a `PolicyNetwork` or `CausalLMPolicy` (or a
            `ResponseGenerator`, which brings its policy and both lengths).
            Samples the candidates; trained in
            `"sequence_likelihood"` mode.
        prompt_length: int. Prompt columns `P` of each packed row.
        max_new_tokens: int. Longest candidate, EOS included.
        mode: str or None. `"sequence_likelihood"` (trains the policy) or
            `"encoder"` (trains `encoder`, the article's loss). Defaults to
            `None`: `"encoder"` when an `encoder` is given, else
            `"sequence_likelihood"`.
        encoder: an `LLMEncoder`, required and trained in `"encoder"` mode.
        ranking_fn: a `keras_selffb.rewards.Reward` that scores candidates.
            Defaults to `RougeLReward()` (ROUGE-L F on content ids).
        num_samples: int. Candidates per prompt `K >= 2`. Defaults to `4`.
        sampler: str, dict or keras-hub sampler. Defaults to `"random"`.
        temperature: float. Sampling temperature. Defaults to `1.0`.
        seed: int or None. Seeds the sampler. Defaults to `None`.
        num_pairs: int. Encoder mode: the `num_pairs` best candidates are
            paired with the `num_pairs` worst. Defaults to `1`.
        min_score_gap: float >= 0. A pair counts only if the better
            candidate scores more than this above the other. Defaults to
            `0.0` (ties never pair).
        margin: float >= 0 or None. Encoder mode: `m`; sequence mode: the
            margin per step of rank distance. Defaults to `None`: `0.5`
            (encoder) or `0.001` (sequence, BRIO).
        distance: str. Encoder mode: `"cosine"` (`1 - cos`) or
            `"euclidean"`. Defaults to `"cosine"`.
        anchor: str. Encoder mode: `"reference"` or `"source"` (the prompt).
            Defaults to `"reference"`.
        length_penalty: float. Sequence mode: a candidate's score is
            `sum log p / length ** length_penalty`. Defaults to `1.0` (the
            mean per token; BRIO used 2.0 on CNN/DM, 0.6 on XSum).
        rank_weight: float. Sequence mode: weight of the ranking loss.
            Defaults to `1.0`. (BRIO's 10.0 with `mle_weight=0.1` wrecked
            our policies' perplexity: docs/contrastive.md.)
        mle_weight: float. Sequence mode: weight of the reference's token
            NLL, which keeps the policy a language model. Defaults to `1.0`.

    Example:

    >>> import numpy as np
    >>> from keras_selffb.models import PolicyNetwork
    >>> trainer = ContrastiveTrainer(
    ...     PolicyNetwork(12, 8, 8), prompt_length=3, max_new_tokens=3,
    ...     mode="sequence_likelihood", num_samples=2, margin=0.1,
    ...     rank_weight=1.0, mle_weight=0.0)  # the ranking loss alone
    >>> trainer.compile(optimizer=keras.optimizers.SGD(0.5))
    >>> packed = np.array([[1, 5, 4, 6, 7, 2]], "int32")  # prompt | reference
    >>> candidates = np.array([[[6, 7, 2], [9, 2, 0]]], "int32")  # [B, K, N]
    >>> s = trainer.candidate_scores(packed, candidates).numpy()[0]  # log p per token
    >>> logs = trainer.fit(packed, candidates, epochs=3, verbose=0).history
    >>> # ROUGE-L against the reference: 1 for the copy, 0 for the other.
    >>> logs["positive_score"][0], logs["negative_score"][0], logs["score"][0]
    (1.0, 0.0, 0.5)
    >>> # The first step's loss is BRIO's max(0, s_worse - s_better + margin).
    >>> bool(abs(logs["rank_loss"][0] - max(0.0, s[1] - s[0] + 0.1)) < 1e-6)
    True
    >>> s = trainer.candidate_scores(packed, candidates).numpy()[0]
    >>> bool(s[0] - s[1] >= 0.1), logs["rank_loss"][-1], logs["pair_accuracy"][-1]
    (True, 0.0, 1.0)

    References:
        Hadsell, Chopra and LeCun (2006), "Dimensionality Reduction by
        Learning an Invariant Mapping". Liu, Liu, Radev and Neubig (2022),
        "BRIO: Bringing Order to Abstractive Summarization". Zhao et al.
        (2022), "Calibrating Sequence Likelihood Improves Conditional
        Language Generation".
    """

    def __init__(
        self,
        policy,
        prompt_length=None,
        max_new_tokens=None,
        mode=None,
        encoder=None,
        ranking_fn=None,
        num_samples=4,
        sampler="random",
        temperature=1.0,
        seed=None,
        num_pairs=1,
        min_score_gap=0.0,
        margin=None,
        distance="cosine",
        anchor="reference",
        length_penalty=1.0,
        rank_weight=1.0,
        mle_weight=1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        policy, prompt_length, max_new_tokens = unpack_generator(
            policy, prompt_length, max_new_tokens, owner="ContrastiveTrainer"
        )
        if mode is None:
            mode = "encoder" if encoder is not None else "sequence_likelihood"
        if mode not in MODES:
            raise ValueError(f"Unknown mode {mode!r}; choose one of {MODES}.")
        if mode == "encoder" and encoder is None:
            raise ValueError(
                "mode='encoder' trains an encoder: pass encoder=LLMEncoder(...), "
                "or use mode='sequence_likelihood' to train the policy."
            )
        if num_samples < 2:
            raise ValueError(
                f"num_samples={num_samples}: contrastive training compares candidates, "
                "it needs K >= 2 per prompt."
            )
        if mode == "encoder" and not 1 <= num_pairs <= num_samples // 2:
            raise ValueError(
                f"num_pairs={num_pairs}: need 1 <= num_pairs <= num_samples // 2 = "
                f"{num_samples // 2}."
            )
        if anchor not in ANCHORS:
            raise ValueError(f"Unknown anchor {anchor!r}; choose one of {ANCHORS}.")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1; got {max_new_tokens}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0; got {temperature}.")
        if rank_weight < 0 or mle_weight < 0:
            raise ValueError("rank_weight and mle_weight must be >= 0.")
        self.policy = policy
        self.encoder = encoder if mode == "encoder" else None
        self.prompt_length = prompt_length
        self.max_new_tokens = max_new_tokens
        self.mode = mode
        self.ranking_fn = ranking_fn if ranking_fn is not None else RougeLReward()
        self.num_samples = num_samples
        self.temperature = float(temperature)
        self.num_pairs = num_pairs
        self.min_score_gap = check_score_gap(min_score_gap)
        self.margin = check_margin(DEFAULT_MARGINS[mode] if margin is None else margin)
        self.distance = check_distance(distance)
        self.anchor = anchor
        self.length_penalty = float(length_penalty)
        self.rank_weight = float(rank_weight)
        self.mle_weight = float(mle_weight)
        sampler_kwargs = {"temperature": self.temperature}
        if seed is not None:
            sampler_kwargs["seed"] = seed
        self.sampler = get_sampler(sampler, **sampler_kwargs)
        self._bias = special_token_bias(policy.vocab_size)
        # Every logged value is a ratio of sums, exact over an epoch and
        # over replicas.
        names = ["loss", "margin_violations", "pair_accuracy", "positive_score",
                 "negative_score", "score", "skipped_groups"]
        if mode == "encoder":
            names += ["positive_distance", "negative_distance"]
        else:
            names += ["rank_loss", "mle_loss"]
        self._trackers = {name: RatioTracker(name=name) for name in names}

    @property
    def metrics(self):
        return list(self._trackers.values())

    @property
    def trained_model(self):
        """The model this trainer updates: the encoder or the policy."""
        return self.encoder if self.mode == "encoder" else self.policy

    def build(self, input_shape=None):
        self.built = True

    def call(self, inputs, training=None):
        return self.policy(inputs, training=training)

    # -- pieces of the step -------------------------------------------------

    def sample(self, prompt_ids):
        """K candidates per prompt, `[B, K, N]` (no gradient)."""
        _, ids = sample_candidates(
            self.policy, prompt_ids, self.num_samples, self.max_new_tokens, self.sampler
        )
        return tf.reshape(ids, [-1, self.num_samples, self.max_new_tokens])

    def check_candidates(self, candidates, batch_size, num_samples=None):
        """Candidate ids `[B, K, N]` or prompt-major `[B * K, N]` as int32 `[B, K, N]`."""
        k = self.num_samples if num_samples is None else num_samples
        candidates = tf.cast(tf.convert_to_tensor(candidates), tf.int32)
        shape = candidates.shape
        if shape.rank not in (2, 3):
            raise ValueError(
                f"Candidates must be [B, K, N] or [B * K, N] token ids; got shape {shape}."
            )
        if any(dim == 0 for dim in shape):
            raise ValueError(f"The candidate set is empty (shape {shape}): nothing to rank.")
        if shape.rank == 3 and shape[1] is not None and shape[1] != k:
            raise ValueError(f"Candidates hold {shape[1]} per prompt but K={k} was expected.")
        rows = shape[0] if shape.rank == 2 else (None if shape[0] is None else shape[0] * shape[1])
        expected = batch_size * k
        if isinstance(expected, int) and rows is not None and rows != expected:
            raise ValueError(
                f"Expected {expected} candidates ({batch_size} prompts x K={k}); got {rows}."
            )
        dynamic = tf.shape(candidates)
        checks = [
            tf.debugging.assert_positive(tf.size(candidates), message="The candidate set is empty."),
            tf.debugging.assert_equal(
                tf.reduce_prod(dynamic[:-1]), expected,
                message="Candidates must number (prompts x K), prompt-major.",
            ),
        ]
        with tf.control_dependencies(checks):
            return tf.reshape(candidates, [-1, k, dynamic[-1]])

    def score(self, prompt_ids, references, candidates):
        """The ranking function's quality of candidates `[B, K, N]`: `[B, K]`, checked finite."""
        rows, k, length = _shape3(candidates)
        quality = self.ranking_fn(
            tf.repeat(prompt_ids, k, axis=0),
            tf.reshape(candidates, [rows * k, length]),
            tf.repeat(references, k, axis=0),
        )
        quality = tf.debugging.check_numerics(
            quality, f"Ranking function '{self.ranking_fn.name}' returned NaN or inf"
        )
        return tf.reshape(quality, [rows, k])

    def sequence_scores(self, prompt_ids, candidates, training=False):
        """Length-normalised log-likelihood of candidates `[B, M, N]` under the policy: `[B, M]`."""
        rows, count, length = _shape3(candidates)
        nll, mask, _ = response_token_nll(
            self.policy,
            tf.repeat(prompt_ids, count, axis=0),
            tf.reshape(candidates, [rows * count, length]),
            training=training,
            logit_bias=self._bias,
        )
        tokens = tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
        scores = -tf.reduce_sum(nll, axis=1) / tokens**self.length_penalty
        return tf.reshape(scores, [rows, count])

    def anchor_ids(self, prompt_ids, references):
        """The anchor x of the encoder loss: the references or the prompts."""
        return references if self.anchor == "reference" else prompt_ids

    def encoder_distances(self, anchor_ids, candidates, training=False):
        """`d(anchor, candidate)` for candidates `[B, M, N]`: `[B, M]`."""
        rows, count, length = _shape3(candidates)
        features = self.encoder(tf.reshape(candidates, [rows * count, length]), training=training)
        features = tf.reshape(features, [rows, count, -1])
        anchor = self.encoder(anchor_ids, training=training)[:, None, :]
        return feature_distance(anchor, features, self.distance)

    def candidate_scores(self, batch, candidates):
        """How much the trained model prefers each candidate (higher is better).

        Sequence mode: the length-normalised log-likelihood; encoder mode:
        `-d(anchor, candidate)`. Inference mode (no dropout).

        Args:
            batch: int32 packed rows `[B, P + R]`.
            candidates: int32 `[B, M, N]`, any number M of candidates.

        Returns:
            float32 `[B, M]`.
        """
        prompt_ids, references = split_packed(batch, self.prompt_length)
        candidates = tf.convert_to_tensor(candidates)
        if candidates.shape.rank != 3:
            raise ValueError(f"candidate_scores needs candidates [B, M, N]; got shape {candidates.shape}.")
        candidates = self.check_candidates(candidates, _batch_size(prompt_ids), candidates.shape[1])
        if self.mode == "sequence_likelihood":
            return self.sequence_scores(prompt_ids, candidates)
        return -self.encoder_distances(self.anchor_ids(prompt_ids, references), candidates)

    def compute_losses(self, batch, candidates=None, training=True):
        """The loss for one packed batch and the sums logged with it.

        `candidates` (`[B, K, N]` or prompt-major `[B * K, N]`) skip
        sampling: for precomputed candidates and for exact tests.
        """
        prompt_ids, references = split_packed(batch, self.prompt_length)
        if candidates is None:
            candidates = self.sample(prompt_ids)
        else:
            candidates = self.check_candidates(candidates, _batch_size(prompt_ids))
        quality = self.score(prompt_ids, references, candidates)
        skipped = tf.cast(skipped_groups(quality, self.min_score_gap), tf.float32)
        logs = {
            "groups": tf.cast(tf.shape(quality)[0], tf.float32),
            "skipped": tf.reduce_sum(skipped),
            "quality_sum": tf.reduce_sum(quality),
            "candidates": tf.cast(tf.size(quality), tf.float32),
        }
        if self.mode == "encoder":
            return self._encoder_loss(prompt_ids, references, candidates, quality, logs, training)
        return self._sequence_loss(prompt_ids, references, candidates, quality, skipped, logs, training)

    def _encoder_loss(self, prompt_ids, references, candidates, quality, logs, training):
        k = self.num_pairs
        positive, negative, valid = select_pairs(quality, k, self.min_score_gap)
        pair_ids = tf.concat(
            [tf.gather(candidates, positive, batch_dims=1), tf.gather(candidates, negative, batch_dims=1)],
            axis=1,
        )
        anchor_ids = self.anchor_ids(prompt_ids, references)
        distances = self.encoder_distances(anchor_ids, pair_ids, training=training)
        d_pos, d_neg = distances[:, :k], distances[:, k:]
        valid = tf.cast(valid, tf.float32)
        pairs = tf.reduce_sum(valid)
        loss_sum = tf.reduce_sum(margin_loss(d_pos, d_neg, self.margin) * valid)
        # The one all-reduce of the step; it feeds the loss.
        loss = loss_sum / tf.maximum(global_sum(pairs), 1.0)
        logs.update(
            pairs=pairs,
            loss_numerator=loss_sum,
            loss_denominator=pairs,
            violations=tf.reduce_sum(tf.cast(d_neg < self.margin, tf.float32) * valid),
            correct=tf.reduce_sum(tf.cast(d_pos < d_neg, tf.float32) * valid),
            positive_score=tf.reduce_sum(tf.gather(quality, positive, batch_dims=1) * valid),
            negative_score=tf.reduce_sum(tf.gather(quality, negative, batch_dims=1) * valid),
            scored_items=pairs,
            positive_distance=tf.reduce_sum(d_pos * valid),
            negative_distance=tf.reduce_sum(d_neg * valid),
        )
        return loss, logs

    def _sequence_loss(self, prompt_ids, references, candidates, quality, skipped, logs, training):
        scores = self.sequence_scores(prompt_ids, candidates, training=training)
        terms = ranking_loss_terms(scores, quality, self.margin, self.min_score_gap)
        nll, mask, _ = response_token_nll(
            self.policy, prompt_ids, references, training=training, logit_bias=self._bias
        )
        nll_sum, tokens = tf.reduce_sum(nll), tf.reduce_sum(mask)
        # The one all-reduce of the step: pairs per rank distance, reference
        # tokens and groups, summed over replicas; it feeds the loss.
        counts = global_sum(tf.concat([terms.pair_counts, [tokens, logs["groups"]]], axis=0))
        gaps = self.num_samples - 1
        rank_loss = terms.loss(counts[:gaps])
        mle_loss = nll_sum / tf.maximum(counts[gaps], 1.0)
        loss = self.rank_weight * rank_loss + self.mle_weight * mle_loss
        # Each replica's loss is its share of the global loss: weighting it
        # by global / local groups makes the tracked ratio the global value.
        global_groups = counts[gaps + 1]
        order = rank_order(quality)
        kept = 1.0 - skipped
        best = tf.gather(quality, order[:, 0:1], batch_dims=1)[:, 0]
        worst = tf.gather(quality, order[:, -1:], batch_dims=1)[:, 0]
        logs.update(
            pairs=tf.reduce_sum(terms.pair_counts),
            loss_numerator=loss * global_groups,
            loss_denominator=logs["groups"],
            rank_numerator=rank_loss * global_groups,
            mle=(nll_sum, tokens),
            violations=terms.violations,
            correct=terms.correct,
            positive_score=tf.reduce_sum(best * kept),
            negative_score=tf.reduce_sum(worst * kept),
            scored_items=tf.reduce_sum(kept),
        )
        return loss, logs

    # -- Keras hooks ----------------------------------------------------------

    def train_step(self, data):
        batch, candidates, _ = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            loss, logs = self.compute_losses(batch, candidates, training=True)
        variables = self.trained_model.trainable_variables
        gradients = tape.gradient(loss, variables)
        self.optimizer.apply(gradients, variables)
        return self._update_trackers(logs)

    def test_step(self, data):
        batch, candidates, _ = keras.utils.unpack_x_y_sample_weight(data)
        _, logs = self.compute_losses(batch, candidates, training=False)
        return self._update_trackers(logs)

    def _update_trackers(self, logs):
        t = self._trackers
        pairs, items = logs["pairs"], logs["scored_items"]
        t["loss"].update_state(logs["loss_numerator"], logs["loss_denominator"])
        t["margin_violations"].update_state(logs["violations"], pairs)
        t["pair_accuracy"].update_state(logs["correct"], pairs)
        t["positive_score"].update_state(logs["positive_score"], items)
        t["negative_score"].update_state(logs["negative_score"], items)
        t["score"].update_state(logs["quality_sum"], logs["candidates"])
        t["skipped_groups"].update_state(logs["skipped"], logs["groups"])
        if self.mode == "encoder":
            t["positive_distance"].update_state(logs["positive_distance"], pairs)
            t["negative_distance"].update_state(logs["negative_distance"], pairs)
        else:
            t["rank_loss"].update_state(logs["rank_numerator"], logs["groups"])
            t["mle_loss"].update_state(*logs["mle"])
        return step_logs(self.metrics, self.distribute_strategy)
