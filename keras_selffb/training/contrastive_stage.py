"""`run_contrastive_stage`: one contrastive stage of the pipeline, measured before and after.

The stage the `keras-selffb train` pipeline (or a user) runs after MLE:

1. sample `eval_samples` candidates for each validation prompt ONCE from
   the policy as it is (seeded), and score them with the ranking function:
   a fixed set, so "before" and "after" judge the same candidates;
2. measure how the trained model (policy likelihood or encoder distance)
   ranks them, and, in sequence mode, the quality (ROUGE-L F by default)
   of the policy's greedy replies;
3. fit a `ContrastiveTrainer` for `epochs` on the training rows (fresh
   candidates from the policy at every step);
4. measure again. Returns a JSON-ready dict.
"""

import time

import keras
import numpy as np
import tensorflow as tf

from keras_selffb.generator import as_generator, map_batched
from keras_selffb.models.generation import get_sampler
from keras_selffb.models.llm_encoder import LLMEncoder
from keras_selffb.rewards.rouge_l_reward import RougeLReward
from keras_selffb.text.packing import make_dataset
from keras_selffb.training.contrastive_trainer import ContrastiveTrainer
from keras_selffb.training.ranking_eval import ranking_agreement


class CandidateEvaluator:
    """Samples, scores and ranks candidates for packed rows, outside `fit`.

    Each step is one `tf.function` traced once (fixed batch shapes).

    Args:
        trainer: a `ContrastiveTrainer`; its `ranking_fn` scores and its
            `candidate_scores` ranks.
        generator: the `ResponseGenerator` of the trainer's policy, which
            samples (needed by `sample` only). Defaults to `None`.
        batch_size: int. Rows per call. Defaults to the generator's, or `64`.
    """

    def __init__(self, trainer, generator=None, batch_size=None):
        if generator is not None and generator.policy is not trainer.policy:
            raise ValueError("CandidateEvaluator: the generator's policy is not the trainer's.")
        self.trainer = trainer
        self.generator = generator
        self.batch_size = batch_size or (generator.batch_size if generator is not None else 64)
        self._quality = tf.function(self._quality_fn)
        self._preferences = tf.function(trainer.candidate_scores)

    def sample(self, packed, num_samples, sampler):
        """`num_samples` candidates per row from `sampler`: int32 `[N, K, L]`."""
        if self.generator is None:
            raise ValueError("CandidateEvaluator.sample needs the policy's ResponseGenerator (generator=).")
        ids = self.generator.generate_rows(packed, num_samples, sampler=sampler)
        return ids.reshape(len(packed), num_samples, -1)

    def _quality_fn(self, rows, candidates):
        prompt_ids, references = rows[:, : self.trainer.prompt_length], rows[:, self.trainer.prompt_length :]
        k = tf.shape(candidates)[1]
        flat = tf.reshape(candidates, [-1, tf.shape(candidates)[2]])
        quality = self.trainer.ranking_fn(
            tf.repeat(prompt_ids, k, axis=0), flat, tf.repeat(references, k, axis=0)
        )
        return tf.reshape(quality, [-1, k])

    def quality(self, packed, candidates):
        """The ranking function's score of `candidates [N, K, L]`: `[N, K]`."""
        return map_batched(self._quality, [packed, candidates], self.batch_size)

    def preferences(self, packed, candidates):
        """The trained model's preference for each candidate: `[N, K]`."""
        return map_batched(self._preferences, [packed, candidates], self.batch_size)


def run_contrastive_stage(
    policy,
    tokenizer=None,
    train_packed=None,
    validation_packed=None,
    prompt_length=None,
    response_length=None,
    epochs=2,
    seed=0,
    mode="sequence_likelihood",
    encoder=None,
    ranking_fn=None,
    num_samples=4,
    eval_samples=8,
    max_eval_prompts=256,
    batch_size=32,
    learning_rate=1e-3,
    temperature=0.7,
    rank_weight=1.0,
    mle_weight=1.0,
    verbose=0,
    **trainer_kwargs,
):
    """Runs a contrastive stage on `policy` and reports before/after figures.

    The policy (sequence mode) or the encoder (encoder mode) is trained in
    place. Candidates are sampled by the policy with a seeded `"random"`
    sampler at `temperature`; the stage also seeds Keras's global random
    state with `seed` (`keras.utils.set_random_seed`), as the pipeline does.

    Args:
        policy: a `PolicyNetwork` or `CausalLMPolicy`, e.g. after MLE; or a
            `ResponseGenerator` (then `run_contrastive_stage(generator,
            train_packed=..., validation_packed=...)`: it brings the
            tokenizer and both lengths).
        tokenizer: its tokenizer; the default ranking function compares
            detokenized words (`RougeLReward(tokenizer)`, `"cjk"`).
        train_packed: int32 `[N, P + R]` packed training rows.
        validation_packed: int32 `[M, P + R]`; the first `max_eval_prompts`
            rows are used for the figures.
        prompt_length: int. `P`.
        response_length: int. `R`; also the longest candidate.
        epochs: int. Contrastive epochs. Defaults to `2`.
        seed: int. Seeds the sampler, the shuffling and the fixed
            evaluation candidates. Defaults to `0`.
        mode: str. `"sequence_likelihood"` (trains the policy, BRIO) or
            `"encoder"` (trains `encoder`, the article's loss). Defaults to
            `"sequence_likelihood"`.
        encoder: an `LLMEncoder` for encoder mode. Defaults to a new one
            the size of the policy (it is then not returned: pass your own
            to keep it).
        ranking_fn: a `Reward`. Defaults to `RougeLReward(tokenizer)`.
        num_samples: int. Candidates per prompt while training. Defaults to `4`.
        eval_samples: int. Candidates per validation prompt for the
            figures. Defaults to `8`.
        max_eval_prompts: int. Defaults to `256`.
        batch_size: int. Prompts per step. Defaults to `32`.
        learning_rate: float. Adam learning rate. Defaults to `1e-3`.
        temperature: float. Sampling temperature. Defaults to `0.7`.
        rank_weight: float. Sequence mode: weight of the ranking loss.
            Defaults to `1.0`.
        mle_weight: float. Sequence mode: weight of the reference NLL.
            Defaults to `1.0`. Measured (docs/contrastive.md): with
            on-policy candidates of a small policy, BRIO's 10 / 0.1 at
            Adam 1e-3 and temperature 1.0 wrecked the policy; 1 / 1 at
            temperature 0.7 did not.
        verbose: int. `fit` verbosity. Defaults to `0`.
        **trainer_kwargs: more `ContrastiveTrainer` arguments (`margin`,
            `rank_weight`, `mle_weight`, `anchor`, `distance`, ...).

    Returns:
        dict: `mode`, `epochs`, `seconds`, `before` and `after` (each the
        `ranking_agreement` figures on the fixed validation candidates,
        plus `greedy_quality`, the ranking function's mean score of greedy
        replies, ROUGE-L F by default, in sequence mode) and `history` (the
        per-epoch logs of `fit`).
    """
    generator = as_generator(policy, tokenizer, prompt_length, response_length, owner="run_contrastive_stage")
    policy, tokenizer = generator.policy, generator.tokenizer
    prompt_length, response_length = generator.prompt_length, generator.max_new_tokens
    if train_packed is None or validation_packed is None:
        raise TypeError("run_contrastive_stage needs train_packed and validation_packed rows.")
    keras.utils.set_random_seed(seed)
    ranking_fn = ranking_fn if ranking_fn is not None else RougeLReward(tokenizer)
    if mode == "encoder" and encoder is None:
        encoder = LLMEncoder(policy.vocab_size, policy.embedding_dim, policy.hidden_dim)
    trainer = ContrastiveTrainer(
        policy,
        prompt_length,
        response_length,
        mode=mode,
        encoder=encoder,
        ranking_fn=ranking_fn,
        num_samples=num_samples,
        temperature=temperature,
        seed=seed,
        rank_weight=rank_weight,
        mle_weight=mle_weight,
        **trainer_kwargs,
    )
    validation = np.asarray(validation_packed, dtype=np.int32)[:max_eval_prompts]
    evaluator = CandidateEvaluator(trainer, generator)
    candidates = evaluator.sample(
        validation, eval_samples, get_sampler("random", temperature=temperature, seed=seed + 1)
    )
    quality = evaluator.quality(validation, candidates)
    greedy = get_sampler("greedy")

    def measure():
        figures = ranking_agreement(evaluator.preferences(validation, candidates), quality)
        if mode == "sequence_likelihood":
            replies = evaluator.sample(validation, 1, greedy)
            figures["greedy_quality"] = float(evaluator.quality(validation, replies).mean())
        return figures

    before = measure()
    trainer.compile(optimizer=keras.optimizers.Adam(learning_rate, clipnorm=1.0), jit_compile=False)
    start = time.perf_counter()
    history = trainer.fit(
        make_dataset(train_packed, batch_size, shuffle=True, seed=seed),
        epochs=epochs,
        verbose=verbose,
        shuffle=False,  # the dataset shuffles itself, seeded
    )
    seconds = time.perf_counter() - start
    return {
        "mode": mode,
        "epochs": epochs,
        "seconds": round(seconds, 1),
        "before": before,
        "after": measure(),
        "history": {k: [float(v) for v in values] for k, values in history.history.items()},
    }

