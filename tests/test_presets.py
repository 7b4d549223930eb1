"""Pretrained keras-hub presets with their own tokenizers: PresetTokenizer and CausalLMPolicy.from_preset.

No network: tiny random GPT-2 (hand-made byte-level BPE) and Llama
(SentencePiece trained here) presets are written once per module with
`save_to_preset`, then read back as a user's downloaded preset would be.
"""

import io
import json
import os

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from keras_selffb.models import CausalLMPolicy, response_token_nll
from keras_selffb.models.generation import generate_ids, get_sampler
from keras_selffb.text import (
    EOS_ID,
    NUM_RESERVED,
    PAD_ID,
    UNK_ID,
    PresetTokenizer,
    detokenize_texts,
    load_tokenizer,
    pack_pairs,
    save_tokenizer,
)
from keras_selffb.training import MLETrainer, ReinforceTrainer

from test_distributed import CountReward  # the LSTM's two-replica test reward

try:
    import sentencepiece
except ImportError:  # the Llama variant needs it to train its tokenizer
    sentencepiece = None

KINDS = ["gpt2", pytest.param("llama", marks=pytest.mark.skipif(
    sentencepiece is None, reason="sentencepiece is not installed (the Llama tokenizer is trained with it)"))]
P, R = 10, 10  # prompt and reply columns
# Prompts of different lengths (1, 3 and 5 GPT-2 tokens): mixed left padding in one batch.
PAIRS = [("hi", "the cat"), ("the hat in", "a mat\nok"), ("in the hat the cat", "hé")]
TEXTS = ["the cat in the hat", "Crème brûlée, naïve über", "你好，世界！", "tabs\tand  spaces\nnewline", ""]


def byte_alphabet():
    """GPT-2's printable stand-in for each byte 0..255 (byte b is id b below)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(shifted)) for b in range(256)]


def gpt2_tokenizer():
    """Every byte is a token (lossless on any text) plus a few merges; "Ġ" is space, "Ċ" newline."""
    merges = ["Ġ t", "h e", "Ġt he", "Ġ c", "a t", "Ġc at", "i n", "Ġ h", "Ġh at", "Ġ in"]
    pieces = byte_alphabet() + ["".join(m.split()) for m in merges] + ["<|endoftext|>"]
    vocabulary = {piece: i for i, piece in enumerate(dict.fromkeys(pieces))}
    return keras_hub.tokenizers.GPT2Tokenizer(vocabulary=vocabulary, merges=merges)


def llama_tokenizer():
    """A SentencePiece BPE with byte fallback, no normalization: lossless too."""
    corpus = [text for text in TEXTS + [p + " " + r for p, r in PAIRS] if text] * 10
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=proto, vocab_size=300, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", add_dummy_prefix=False,
        remove_extra_whitespaces=False, character_coverage=1.0, hard_vocab_limit=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2,
    )
    return keras_hub.tokenizers.LlamaTokenizer(proto=proto.getvalue())


def write_preset(kind, directory):
    keras.utils.set_random_seed(7)
    if kind == "gpt2":
        tokenizer = gpt2_tokenizer()
        backbone = keras_hub.models.GPT2Backbone(
            vocabulary_size=tokenizer.vocabulary_size(), num_layers=1, num_heads=2, hidden_dim=16,
            intermediate_dim=32, dropout=0.0, max_sequence_length=32,
        )
        preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=16)
        causal_lm = keras_hub.models.GPT2CausalLM(backbone, preprocessor)
    else:
        tokenizer = llama_tokenizer()
        backbone = keras_hub.models.LlamaBackbone(
            vocabulary_size=tokenizer.vocabulary_size(), num_layers=1, num_query_heads=2,
            num_key_value_heads=1, hidden_dim=16, intermediate_dim=32, dropout=0.0,
        )
        preprocessor = keras_hub.models.LlamaCausalLMPreprocessor(tokenizer, sequence_length=16)
        causal_lm = keras_hub.models.LlamaCausalLM(backbone, preprocessor)
    causal_lm.save_to_preset(str(directory))


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    """`{kind: preset directory}`, written once for the module."""
    out = {}
    for kind in ("gpt2", "llama") if sentencepiece else ("gpt2",):
        out[kind] = tmp_path_factory.mktemp(kind)
        write_preset(kind, out[kind])
    return out


@pytest.fixture(scope="module")
def loaded(presets):
    """`{kind: (tokenizer, policy, hub)}`: ours and keras-hub's own model (no preprocessor), unchanged by tests."""
    out = {}
    for kind, directory in presets.items():
        tokenizer = PresetTokenizer.from_preset(str(directory))
        policy = CausalLMPolicy.from_preset(str(directory), tokenizer)
        hub = keras_hub.models.CausalLM.from_preset(str(directory), preprocessor=None)
        out[kind] = tokenizer, policy, hub
    return out


def log_softmax(x):
    return x - np.logaddexp.reduce(x, axis=-1, keepdims=True)


def hub_ids(tokenizer, text):
    """keras-hub's own tokenization (its eager, pure-Python path)."""
    return [int(i) for i in np.asarray(tokenizer.tokenizer.tokenize(text)).reshape(-1)]


# -- tokenizer -----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_is_lossless_and_ids_are_hub_ids_shifted(kind, loaded):
    tokenizer, policy, _ = loaded[kind]
    ids = tokenizer.tokenize(TEXTS)
    assert isinstance(ids, tf.RaggedTensor) and ids.dtype == tf.int32
    assert detokenize_texts(tokenizer, ids) == TEXTS  # English, accents, Chinese, whitespace
    assert ids[-1].numpy().tolist() == []  # the empty string is an empty row
    assert ids.to_list() == [[i + NUM_RESERVED for i in hub_ids(tokenizer, t)] for t in TEXTS]
    # A scalar gives one dense row, as CharTokenizer and keras-hub do.
    scalar = tokenizer.tokenize("the cat")
    assert isinstance(scalar, tf.Tensor) and scalar.dtype == tf.int32
    assert scalar.numpy().tolist() == tokenizer.tokenize(["the cat"])[0].numpy().tolist()
    assert tokenizer.vocabulary_size == policy.vocab_size == NUM_RESERVED + tokenizer.tokenizer.vocabulary_size()
    # Reserved ids (PAD, BOS, EOS, UNK, SEP) are dropped when detokenizing.
    row = [1] + ids[0].numpy().tolist() + [4, UNK_ID, EOS_ID, PAD_ID]
    assert detokenize_texts(tokenizer, np.array([row])) == [TEXTS[0]]


@pytest.mark.parametrize("kind", KINDS)
def test_tokenizer_survives_setting_the_seed(kind, loaded):
    """TensorFlow drops tensorflow-text's SentencePiece model when the seed is set; it is rebuilt."""
    tokenizer = loaded[kind][0]
    before = tokenizer.tokenize(TEXTS).to_list()
    keras.utils.set_random_seed(3)  # what every run does first
    assert tokenizer.tokenize(TEXTS).to_list() == before
    keras.utils.set_random_seed(4)
    assert detokenize_texts(tokenizer, tf.ragged.constant(before)) == TEXTS


def test_gpt2_token_map(loaded):
    tokenizer = loaded["gpt2"][0]
    end = tokenizer.tokenizer.token_to_id("<|endoftext|>")
    newline = tokenizer.tokenizer.token_to_id("Ċ")
    # GPT-2: <|endoftext|> starts and ends; keras-hub pads with id 0; no unknown token.
    assert tokenizer.token_map() == {"pad": 0, "bos": end, "eos": end, "unk": end, "sep": newline, "size": end + 1}


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_with_a_run(kind, loaded, tmp_path):
    tokenizer = loaded[kind][0]
    path = save_tokenizer(tokenizer, tmp_path)
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    assert config["kind"] == "preset" and config["directory"] == "tokenizer_preset"
    assert config == tokenizer.get_config()  # what the run directory compares on resume
    # keras-hub's Tokenizer.save_to_preset: the tokenizer config and its vocabulary files only.
    files = sorted(os.path.relpath(os.path.join(d, f), tmp_path) for d, _, fs in os.walk(tmp_path) for f in fs)
    assert [f for f in files if not f.startswith("tokenizer_preset/assets/tokenizer/")] == [
        "tokenizer.json", "tokenizer_preset/tokenizer.json"
    ]
    save_tokenizer(tokenizer, tmp_path)  # saving again replaces the copy whole
    loaded_tokenizer = load_tokenizer(str(tmp_path))
    assert isinstance(loaded_tokenizer, PresetTokenizer)
    assert loaded_tokenizer.token_map() == tokenizer.token_map()
    assert loaded_tokenizer.tokenize(TEXTS).to_list() == tokenizer.tokenize(TEXTS).to_list()
    assert sorted(os.listdir(tmp_path)) == ["tokenizer.json", "tokenizer_preset"]


def test_load_refuses_a_changed_or_missing_tokenizer_copy(loaded, tmp_path):
    tokenizer = loaded["gpt2"][0]
    save_tokenizer(tokenizer, tmp_path)
    config = json.loads((tmp_path / "tokenizer.json").read_text())
    config["fingerprint"] = "0" * 64
    (tmp_path / "tokenizer.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="vocabulary files differ") as error:
        load_tokenizer(tmp_path)
    assert "\n" not in str(error.value)
    os.rename(tmp_path / "tokenizer_preset", tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match="tokenizer_preset"):
        load_tokenizer(tmp_path)


# -- parity with keras-hub -----------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_reply_log_probs_equal_keras_hub_score(kind, loaded):
    tokenizer, policy, hub = loaded[kind]
    token_map = tokenizer.token_map()
    packed = pack_pairs(tokenizer, PAIRS, P, R)
    prompts, replies = packed[:, :P], packed[:, P:]
    assert len({int((row != PAD_ID).sum()) for row in prompts}) == 3  # three prompt lengths

    # keras-hub's own view: its ids from its own tokenizer, its start and end tokens, "\n" between.
    rows, starts = [], []
    for prompt, reply in PAIRS:
        prompt_ids, reply_ids = hub_ids(tokenizer, prompt), hub_ids(tokenizer, reply)
        row = [token_map["bos"]] + prompt_ids + [token_map["sep"]]
        starts.append(len(row))
        rows.append(row + reply_ids + [token_map["eos"]])
    width = max(map(len, rows))
    lengths = [len(row) for row in rows]
    hub_rows = np.array([row + [token_map["pad"]] * (width - len(row)) for row in rows], "int32")
    mask = np.arange(width)[None, :] < np.array(lengths)[:, None]
    logits = np.asarray(hub.score(hub_rows, padding_mask=mask, scoring_mode="logits"))

    nll, reply_mask, _ = response_token_nll(policy, prompts, replies)
    expected = np.zeros(replies.shape)
    for b, (row, start) in enumerate(zip(rows, starts)):
        targets = row[start:]
        # Our reply ids are the hub's shifted, its end token our EOS.
        ours = [t + NUM_RESERVED for t in targets[:-1]] + [EOS_ID]
        assert replies[b, : len(ours)].tolist() == ours
        for t, target in enumerate(targets):
            expected[b, t] = log_softmax(logits[b, start + t - 1])[target]
    np.testing.assert_array_equal(reply_mask.numpy(), (replies != PAD_ID).astype("float32"))
    np.testing.assert_allclose(-nll.numpy(), expected, atol=1e-5)
    # The softmax over our ids is the hub's: nothing is lost on the masked copies.
    all_logits = policy(packed).numpy()
    np.testing.assert_allclose(np.exp(log_softmax(all_logits)).sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_generation_equals_keras_hub_generate(kind, loaded):
    tokenizer, policy, hub = loaded[kind]
    token_map = tokenizer.token_map()
    new_tokens = 10
    prompts = ["hi", "the hat in", "in the hat the cat", "你好"]
    prompt_ids = pack_pairs(tokenizer, [(p, "") for p in prompts], P, 2)[:, :P]
    ours = generate_ids(policy, prompt_ids, new_tokens, get_sampler("greedy")).numpy()

    rows = [[token_map["bos"]] + hub_ids(tokenizer, p) + [token_map["sep"]] for p in prompts]
    width = P + new_tokens
    buffer = np.array([row + [token_map["pad"]] * (width - len(row)) for row in rows], "int32")
    padding_mask = np.arange(width)[None, :] < np.array([len(row) for row in rows])[:, None]
    hub.compile(sampler="greedy", jit_compile=False)
    out = hub.generate({"token_ids": buffer, "padding_mask": padding_mask}, stop_token_ids=[token_map["eos"]])
    theirs = np.full_like(ours, PAD_ID)
    texts = []
    for b, row in enumerate(rows):
        generated = np.asarray(out["token_ids"][b, len(row) : len(row) + new_tokens]).tolist()
        kept = np.asarray(out["padding_mask"][b, len(row) : len(row) + new_tokens]).tolist()
        generated = [t for t, keep in zip(generated, kept) if keep]
        if token_map["eos"] in generated:
            generated = generated[: generated.index(token_map["eos"]) + 1]
        theirs[b, : len(generated)] = [EOS_ID if t == token_map["eos"] else t + NUM_RESERVED for t in generated]
        text_ids = [t for t in generated if t != token_map["eos"]]
        texts.append(str(tokenizer.tokenizer.detokenize(text_ids)))  # keras-hub's eager (Python) path
    np.testing.assert_array_equal(ours, theirs)
    assert detokenize_texts(tokenizer, ours) == texts
    # Not trivially short: the replies differ and are more than EOS.
    assert (ours != PAD_ID).sum() > 2 * len(prompts) and len(set(map(tuple, ours))) > 1


# -- errors ----------------------------------------------------------------------


def test_missing_and_foreign_directories_give_one_line_errors(presets, tmp_path):
    missing = str(tmp_path / "no_such_preset")
    for load in (PresetTokenizer.from_preset, CausalLMPolicy.from_preset):
        with pytest.raises(FileNotFoundError, match="no_such_preset") as error:
            load(missing)
        assert "\n" not in str(error.value)
    foreign = tmp_path / "not_a_preset"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("hello")
    for load in (PresetTokenizer.from_preset, CausalLMPolicy.from_preset):
        with pytest.raises(ValueError, match="not_a_preset.*not a keras-hub") as error:
            load(str(foreign))
        assert "\n" not in str(error.value)


def test_a_tokenizer_too_large_for_the_model_is_refused(presets, loaded):
    if "llama" not in presets:
        pytest.skip("needs the Llama preset (sentencepiece)")
    llama_tokenizer_ = loaded["llama"][0]
    # The Llama tokenizer has 300 ids, the tiny GPT-2 model 267.
    with pytest.raises(ValueError, match=r"vocabulary \(300 ids\) does not fit the model's \(267 ids\)"):
        CausalLMPolicy.from_preset(str(presets["gpt2"]), llama_tokenizer_)


def test_bad_token_maps_and_tokenizers(loaded):
    _, policy, _ = loaded["gpt2"]
    with pytest.raises(ValueError, match="lacks"):
        CausalLMPolicy(policy.causal_lm, token_map={"pad": 0})
    with pytest.raises(ValueError, match="outside"):
        CausalLMPolicy(policy.causal_lm, token_map={**policy.token_map, "sep": 10_000})
    with pytest.raises(ValueError, match="does not fit the model's"):
        CausalLMPolicy(policy.causal_lm, token_map={**policy.token_map, "size": 10_000})
    with pytest.raises(TypeError, match="keras_hub.tokenizers.Tokenizer"):
        PresetTokenizer("gpt2")


# -- serialization, LoRA, trainers -----------------------------------------------


def test_keras_round_trip_keeps_the_token_map(presets, loaded, tmp_path):
    tokenizer, policy, _ = loaded["gpt2"]
    packed = pack_pairs(tokenizer, PAIRS, P, R)
    policy.save(tmp_path / "policy.keras")
    restored = keras.saving.load_model(tmp_path / "policy.keras")
    assert restored.token_map == policy.token_map and restored.vocab_size == policy.vocab_size
    assert set(policy.get_config()["token_map"]) == {"pad", "bos", "eos", "unk", "sep", "size"}  # compact
    np.testing.assert_allclose(restored(packed), policy(packed), atol=1e-6)
    greedy = get_sampler("greedy")
    np.testing.assert_array_equal(
        generate_ids(restored, packed[:, :P], 4, greedy), generate_ids(policy, packed[:, :P], 4, greedy)
    )


def test_merge_lora_folds_the_update_into_the_base(presets, loaded):
    tokenizer = loaded["gpt2"][0]
    policy = CausalLMPolicy.from_preset(str(presets["gpt2"]), tokenizer)
    packed = pack_pairs(tokenizer, PAIRS, P, R)
    base = policy(packed).numpy()
    policy.enable_lora(2)
    rng = np.random.default_rng(0)
    for variable in policy.trainable_variables:  # an update that is not zero
        variable.assign(rng.normal(0, 0.3, variable.shape))
    with_lora = policy(packed).numpy()
    assert np.abs(with_lora - base).max() > 1e-2
    policy.merge_lora()
    np.testing.assert_allclose(policy(packed), with_lora, atol=1e-5)  # the model is unchanged
    np.testing.assert_allclose(policy.reference()(packed), with_lora, atol=1e-5)  # LoRA-off is now it
    for layer in policy._lora_layers():
        assert not np.any(layer.lora_kernel_b.numpy())
    with pytest.raises(ValueError, match="lora_disabled"):
        with policy.lora_disabled():
            policy.merge_lora()


def test_one_step_of_each_trainer_changes_the_weights(presets, loaded):
    tokenizer = loaded["gpt2"][0]
    policy = CausalLMPolicy.from_preset(str(presets["gpt2"]), tokenizer)
    packed = pack_pairs(tokenizer, PAIRS, P, R)
    for trainer in (
        MLETrainer(policy, P),
        # No baseline: every sampled reply gets a gradient (CountReward is > 0).
        ReinforceTrainer(policy, CountReward(), P, R, num_samples=2, baseline="none", seed=0),
    ):
        before = [w.numpy().copy() for w in policy.trainable_weights]
        trainer.compile(optimizer=keras.optimizers.Adam(0.01))
        logs = trainer.fit(packed, batch_size=3, epochs=1, verbose=0).history
        assert all(np.isfinite(v[0]) for v in logs.values()), logs
        assert any(not np.array_equal(a, w.numpy()) for a, w in zip(before, policy.trainable_weights)), trainer
