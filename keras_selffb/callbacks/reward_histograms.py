"""`RewardHistograms`: TensorBoard histograms of the RL batch's rewards and advantages.

Every n-th training step of a `ReinforceTrainer` the callback reads the
trainer's `last_rewards` and `last_advantages` (the `[B * K]` values of the
step just taken) and writes them as `tf.summary.histogram`s tagged `reward`
and `advantage`, at the optimizer's step count, the step Keras' TensorBoard
callback uses for its batch-level scalars. The spread tells more than the
logged mean: many zero advantages mean groups whose K candidates all scored
alike (nothing to learn from them), a long tail an outlier reward.

Under a distribution strategy the trainer records the first replica's rows
only, so a histogram then shows that replica's share of the batch.
"""

import keras
import tensorflow as tf

from keras_selffb.callbacks._common import SummaryWriter


class RewardHistograms(keras.callbacks.Callback):
    """Writes histograms of the latest RL batch's rewards and advantages.

    Args:
        log_dir: str. Directory of the event files (e.g. the TensorBoard
            callback's `log_dir` + `"/train"` to share its run).
        every_n_steps: int. Write every n-th training step. Defaults to `100`.

    Example:

    ```python
    trainer = ReinforceTrainer(policy, reward, prompt_length=32, max_new_tokens=32)
    trainer.compile(optimizer="adam")
    trainer.fit(dataset, epochs=3, callbacks=[RewardHistograms("logs/train", every_n_steps=10)])
    ```
    """

    def __init__(self, log_dir, every_n_steps=100):
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1; got {every_n_steps}.")
        self.log_dir = log_dir
        self.every_n_steps = every_n_steps
        self._writer = SummaryWriter(log_dir)

    def on_train_begin(self, logs=None):
        if not all(hasattr(self.model, name) for name in ("last_rewards", "last_advantages")):
            raise TypeError(
                "RewardHistograms needs a model that records its last rewards and advantages "
                f"(a ReinforceTrainer); got {type(self.model).__name__}."
            )

    def on_train_batch_end(self, batch, logs=None):
        step = int(_local_value(self.model.optimizer.iterations).numpy())
        if step % self.every_n_steps:
            return
        with self._writer.as_default(step=step):
            tf.summary.histogram("reward", _local_value(self.model.last_rewards))
            tf.summary.histogram("advantage", _local_value(self.model.last_advantages))

    def on_train_end(self, logs=None):
        self._writer.close()


def _local_value(variable):
    """This worker's copy of a (possibly distributed) variable, as a tensor.

    Under MultiWorkerMirroredStrategy, reading a mirrored variable in the
    cross-replica context of a callback fails; its local copy does not.
    """
    value = variable.value if isinstance(variable, keras.Variable) else variable  # unwrap Keras
    local = tf.distribute.get_strategy().experimental_local_results(value)[0]
    return tf.convert_to_tensor(local)
