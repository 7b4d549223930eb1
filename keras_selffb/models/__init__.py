"""Models: the `PolicyNetwork` language model, keras-hub `CausalLMPolicy`, the `LLMEncoder`, generation."""

from keras_selffb.models.causal_lm_policy import CausalLMPolicy, LoRAReference, causal_lm_policy

from keras_selffb.models.generation import (
    SAMPLERS,
    sample_candidates,
    generate_ids,
    get_sampler,
    special_token_bias,
    truncate_after_eos,
)
from keras_selffb.models.judge import RelevanceJudge
from keras_selffb.models.llm_encoder import LLMEncoder
from keras_selffb.models.policy_network import PolicyNetwork, frozen_copy
from keras_selffb.models.scoring import response_token_nll
