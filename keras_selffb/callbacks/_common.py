"""Helpers the callbacks share: the policy behind a model, a lazy summary writer."""

import tensorflow as tf


def resolve_policy(model, owner):
    """Returns the `PolicyNetwork` a callback's model trains.

    Args:
        model: a trainer with a `.policy` attribute (`MLETrainer`,
            `ReinforceTrainer`, `ContrastiveTrainer`) or a `PolicyNetwork`.
        owner: str. The callback named in the error message.
    """
    policy = getattr(model, "policy", model)
    generates = hasattr(policy, "call_with_cache") or hasattr(policy, "generate_ids")  # CausalLMPolicy
    if not (generates and hasattr(policy, "vocab_size")):
        raise TypeError(
            f"{owner} needs a trainer with a `.policy` (MLETrainer, ReinforceTrainer, "
            f"ContrastiveTrainer), a PolicyNetwork or a CausalLMPolicy; got {type(model).__name__}."
        )
    return policy


class SummaryWriter:
    """A `tf.summary` file writer opened on first use and closed at train end.

    Args:
        log_dir: str. Directory of the event files.
    """

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self._writer = None

    def as_default(self, step):
        """Context that sends `tf.summary.*` calls to this writer at `step`."""
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        return self._writer.as_default(step=step)

    def flush(self):
        """Writes pending summaries to disk."""
        if self._writer is not None:
            self._writer.flush()

    def close(self):
        """Closes the file; the next `as_default` opens a new one."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
