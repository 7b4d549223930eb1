"""One `ReinforceTrainer` step split into its parts: shared by rl_step.py and vs_trl.py.

Each part is its own compiled function on the same packed batch, so its
time can be read alone: sampling the K candidates per prompt, scoring them
with the reward, and the update (the teacher-forced re-scoring pass, the
loss, the gradients and the optimizer; the reward runs again inside it,
which costs little next to the rest).
"""

import statistics
import time

import tensorflow as tf


def step_parts(trainer, batch):
    """`({"sampling", "scoring", "update"} -> callable, candidates)` for one step on `batch`.

    `trainer` is a compiled `ReinforceTrainer`; `batch` packed rows
    `[B, P + R]`. The scoring and the update use the candidates drawn once
    here, so every call of a part does the same work.
    """
    trainer.optimizer.build(trainer.policy.trainable_variables)
    prompt_ids = batch[:, : trainer.prompt_length]
    references = tf.repeat(batch[:, trainer.prompt_length :], trainer.num_samples, axis=0)
    sample = tf.function(trainer.sample)
    prompts, candidates = sample(prompt_ids)
    score = tf.function(lambda: trainer.score(prompts, candidates, references)[1])

    @tf.function
    def update():
        with tf.GradientTape() as tape:
            loss, _ = trainer.compute_losses(batch, candidates=candidates)
        variables = trainer.policy.trainable_variables
        trainer.optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    return {"sampling": lambda: sample(prompt_ids), "scoring": score, "update": update}, candidates


def time_call(fn, repeats, statistic=min):
    """`statistic` (min or `statistics.median`) of `repeats` timed calls after one warm-up call."""
    fn()  # trace / warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistic(times)


median = statistics.median
