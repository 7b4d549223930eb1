"""`TextSamples`: a TensorBoard table of the policy's replies, every epoch.

At the end of each epoch the policy replies to a few fixed prompts (same
sampler and seed every epoch, so the rows compare across epochs) and one
`tf.summary.text` summary, tag `samples`, step = epoch, holds a markdown
table: prompt, reply, reference (if given) and, with a reward, the value of
each of its components for the reply against the reference (plus the
`total` when there are several). TensorBoard shows it under TEXT.

Replies are generated on one device (a handful of prompts), also under a
distribution strategy.
"""

import keras
import tensorflow as tf

from keras_selffb.callbacks._common import SummaryWriter, resolve_policy
from keras_selffb.generator import ResponseGenerator, as_generator
from keras_selffb.text.packing import pack_responses
from keras_selffb.text.tokenizer import detokenize_texts


def _cell(text):
    """Markdown-safe table cell: `|` escaped, line breaks as spaces."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


class TextSamples(keras.callbacks.Callback):
    """Writes prompts, replies and reward components to TensorBoard each epoch.

    Args:
        prompts: list of str. The prompts replied to.
        tokenizer: the tokenizer of the policy, or a `ResponseGenerator`
            (its tokenizer, lengths and sampler are used; the replies are
            always the callback's model's).
        log_dir: str. Directory of the event files (e.g. the TensorBoard
            callback's `log_dir` + `"/validation"` to share its run).
        prompt_length: int. Prompt columns, BOS and SEP included.
        max_new_tokens: int. Longest reply, EOS included.
        reward: optional `keras_selffb.rewards.Reward`. Its components are
            computed for each reply against its reference. Defaults to `None`.
        references: optional list of str, one per prompt; needed with a
            reward. Defaults to `None`.
        sampler: str, dict or keras-hub sampler. Defaults to `"greedy"`.
        seed: int. Sampler seed, reset before each epoch's replies.
            Defaults to `0`.

    Example:

    >>> import tempfile
    >>> from keras_selffb.models import PolicyNetwork
    >>> from keras_selffb.rewards import RougeLReward
    >>> from keras_selffb.text import CharTokenizer
    >>> tokenizer = CharTokenizer.train(["hi", "hello"])
    >>> policy = PolicyNetwork(tokenizer.vocabulary_size, 8, 8)
    >>> kernel, bias = policy.head.get_weights()  # make it always say "h"
    >>> bias[tokenizer.vocabulary.index("h")] = 10.0
    >>> policy.head.set_weights([0.0 * kernel, bias])
    >>> callback = TextSamples(["hi"], tokenizer, tempfile.mkdtemp(), prompt_length=6,
    ...                        max_new_tokens=4, reward=RougeLReward(), references=["hello"])
    >>> callback.set_model(policy)
    >>> callback.on_epoch_end(0)
    >>> print(callback.table)  # ROUGE-L F of "hhhh" vs "hello": LCS 1, P 1/4, R 1/5
    | prompt | reply | reference | rouge_l |
    |---|---|---|---|
    | hi | hhhh | hello | 0.2222 |
    """

    def __init__(
        self,
        prompts,
        tokenizer,
        log_dir,
        prompt_length=None,
        max_new_tokens=None,
        reward=None,
        references=None,
        sampler="greedy",
        seed=0,
    ):
        super().__init__()
        if isinstance(tokenizer, ResponseGenerator):
            generator = as_generator(tokenizer, None, prompt_length, max_new_tokens, owner="TextSamples")
            tokenizer, prompt_length, max_new_tokens, sampler = (
                generator.tokenizer, generator.prompt_length, generator.max_new_tokens, generator.sampler
            )
        elif prompt_length is None or max_new_tokens is None:
            raise TypeError("TextSamples needs a ResponseGenerator, or a tokenizer with prompt_length and max_new_tokens.")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("TextSamples needs at least one prompt.")
        if references is not None:
            references = list(references)
            if len(references) != len(prompts):
                raise ValueError(f"{len(references)} references for {len(prompts)} prompts.")
        if reward is not None and references is None:
            raise ValueError("A reward scores replies against references: pass references=.")
        self.prompts = prompts
        self.tokenizer = tokenizer
        self.log_dir = log_dir
        self.prompt_length = prompt_length
        self.max_new_tokens = max_new_tokens
        self.reward = reward
        self.references = references
        self.sampler = sampler
        self.seed = seed
        # The last table written, for inspection.
        self.table = None
        self._writer = SummaryWriter(log_dir)
        self._generator = None
        self._built_for = None

    def on_epoch_end(self, epoch, logs=None):
        self.table = self.render()
        with self._writer.as_default(step=epoch):
            tf.summary.text("samples", self.table)
        self._writer.flush()

    def on_train_end(self, logs=None):
        self._writer.close()

    def render(self):
        """Replies to the prompts now; returns the markdown table."""
        if self._built_for is not self.model:
            policy = resolve_policy(self.model, "TextSamples")
            self._generator = ResponseGenerator(
                policy, self.tokenizer, self.prompt_length, self.max_new_tokens, self.sampler, seed=self.seed
            )
            self._built_for = self.model
        prompt_ids, reply_ids, _ = self._generator.generate_ids(self.prompts, seed=self.seed)
        replies = detokenize_texts(self.tokenizer, reply_ids)
        columns = {"prompt": self.prompts, "reply": replies}
        if self.references is not None:
            columns["reference"] = self.references
        if self.reward is not None:
            columns.update(self._reward_columns(prompt_ids, reply_ids))
        lines = [
            "| " + " | ".join(columns) + " |",
            "|" + "---|" * len(columns),
        ]
        for row in zip(*columns.values()):
            lines.append("| " + " | ".join(_cell(cell) for cell in row) + " |")
        return "\n".join(lines)

    def _reward_columns(self, prompt_ids, reply_ids):
        """Each reward component (and the total of several), formatted per reply."""
        # Long enough for the longest reference: the reward sees it whole.
        longest = int(tf.reduce_max(self.tokenizer.tokenize(self.references).row_lengths()))
        reference_ids, _ = pack_responses(self.tokenizer, self.references, longest + 1)
        components = self.reward.components(prompt_ids, reply_ids, reference_ids)
        values = dict(components)
        if len(components) > 1:
            values["total"] = self.reward.total(components)
        return {name: [f"{float(v):.4f}" for v in value.numpy()] for name, value in values.items()}
