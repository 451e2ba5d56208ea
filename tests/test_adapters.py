"""transformers adapters on tiny checkpoints built from configs: save_pretrained, unmask.load, decode."""

import json
import textwrap

import pytest
import torch
from safetensors.torch import save_file

import unmask
from unmask.contrib.cli import main
from unmask.contrib.models.transformers import CacheNotSupportedError, TransformersDenoiser, decode_text, load
from unmask.testing import build_component
from unmask.contrib.models.tiny import ARCHITECTURES, save_tiny, tiny_model, tiny_tokenizer


@pytest.fixture(scope="module", params=ARCHITECTURES)
def saved(request, tmp_path_factory):
    return save_tiny(request.param, tmp_path_factory.mktemp(request.param)), request.param


def test_load_reads_ids_and_kind(saved):
    directory, architecture = saved
    model, tokenizer = load(directory)
    assert model.mask_token_id == tokenizer.mask_token_id and model.eos_token_id == tokenizer.eos_token_id
    assert model.shift_logits == (architecture == "qwen2")
    assert model.accepts_cache == (architecture != "modernbert")
    assert model.vocab_size == len(tokenizer)


@pytest.mark.parametrize("stop", [None, "eotp"])
def test_every_registered_policy_decodes(saved, stop):
    model, tokenizer = load(saved[0])
    for name in unmask.registry().names("policies"):
        policy = build_component("policies", name, rows=[0, 1], gen_length=16, vocab_size=model.vocab_size,
                                 mask_token_id=model.mask_token_id)
        if policy.leave_one_out and (model.shift_logits or not model.accepts_pair_mask):
            with pytest.raises(ValueError, match="leave-one-out predictions"):  # refused by its declared need
                decode_text(model, tokenizer, ["abc"], gen_length=16, block_length=8, policy=policy, stop=stop)
            continue
        answers, result = decode_text(model, tokenizer, ["abc", "12+3="], gen_length=16, block_length=8,
                                      policy=policy, stop=stop)
        assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
        assert not (result.tokens == model.mask_token_id).any(), name


def test_left_padded_rows_decode_as_alone(saved):
    model, tokenizer = load(saved[0])
    prompts = ["abc", "12+3=", "x"]
    batched, _ = decode_text(model, tokenizer, prompts, gen_length=16, block_length=8, policy="threshold:tau=0.3")
    alone = [decode_text(model, tokenizer, [p], gen_length=16, block_length=8, policy="threshold:tau=0.3")[0][0]
             for p in prompts]
    assert batched == alone


def successor_qwen2(tokenizer):
    """A Qwen2 whose logits at column i name the successor of token i (a -> b -> c ...), confidently,
    and are uniform where token i is [MASK]: attention and MLP outputs are zeroed, embeddings one-hot."""
    model = tiny_model("qwen2", tokenizer)
    vocab, hidden = model.config.vocab_size, model.config.hidden_size
    letters = [tokenizer.convert_tokens_to_ids(c) for c in "abcdefghijklmnopqrstuvwxyz"]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(vocab, hidden))
        model.model.embed_tokens.weight[tokenizer.mask_token_id] = 0
        model.lm_head.weight.zero_()
        for current, following in zip(letters, letters[1:]):
            model.lm_head.weight[following, current] = 5.0
    return model


def test_dream_shift_is_honoured(tmp_path):
    tokenizer = tiny_tokenizer(chat=False)
    successor_qwen2(tokenizer).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    shifted, _ = load(tmp_path)
    assert shifted.shift_logits
    answers, _ = decode_text(shifted, tokenizer, ["a", "f"], gen_length=8, block_length=8)
    assert answers == ["bcdefghi", "ghijklmn"]
    unshifted, _ = load(tmp_path, shift_logits=False)
    wrong, _ = decode_text(unshifted, tokenizer, ["a"], gen_length=8, block_length=8)
    assert wrong != ["bcdefghi"]


def test_causal_checkpoints_are_refused(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                 num_hidden_layers=1, num_attention_heads=2)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="causal attention.*is_causal"):
        load(tmp_path)


def test_a_missing_mask_token_is_a_clear_error(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    tokenizer.mask_token = None
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, is_causal=False,
                                 num_hidden_layers=1, num_attention_heads=2)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no mask token"):
        load(tmp_path)


REMOTE_CONFIG = '''
    from transformers import PreTrainedConfig

    class ToyConfig(PreTrainedConfig):
        model_type = "toy_dllm"

        def __init__(self, vocab_size=48, hidden_size=16, mask_token_id=1, eos_token_id=0, **kwargs):
            self.vocab_size, self.hidden_size = vocab_size, hidden_size
            super().__init__(mask_token_id=mask_token_id, eos_token_id=eos_token_id, **kwargs)
'''
REMOTE_MODEL = '''
    import torch
    from transformers import PreTrainedModel
    from transformers.modeling_outputs import MaskedLMOutput

    from .configuration_toy import ToyConfig

    class ToyModel(PreTrainedModel):
        config_class = ToyConfig

        def __init__(self, config):
            super().__init__(config)
            self.embed = torch.nn.Embedding(config.vocab_size, config.hidden_size)
            self.head = torch.nn.Linear(config.hidden_size, config.vocab_size)
            self.post_init()

        def get_output_embeddings(self):
            return self.head

        def forward(self, input_ids, attention_mask=None, past_key_values=None, **kwargs):
            hidden = self.embed(input_ids)
            return MaskedLMOutput(logits=self.head(hidden + hidden.mean(1, keepdim=True)))
'''


def test_remote_code_needs_opt_in_and_has_no_cache(tmp_path):
    (tmp_path / "configuration_toy.py").write_text(textwrap.dedent(REMOTE_CONFIG))
    (tmp_path / "modeling_toy.py").write_text(textwrap.dedent(REMOTE_MODEL))
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    config = {"model_type": "toy_dllm", "architectures": ["ToyModel"], "vocab_size": len(tokenizer),
              "hidden_size": 16, "mask_token_id": tokenizer.mask_token_id, "eos_token_id": tokenizer.eos_token_id,
              "auto_map": {"AutoConfig": "configuration_toy.ToyConfig", "AutoModel": "modeling_toy.ToyModel"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    weights = {"embed.weight": torch.randn(len(tokenizer), 16), "head.weight": torch.randn(len(tokenizer), 16),
               "head.bias": torch.zeros(len(tokenizer))}
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})

    with pytest.raises(ValueError, match="ships its own code.*trust_remote_code"):
        load(tmp_path)
    model, tokenizer = load(tmp_path, trust_remote_code=True)
    assert model.remote_code and not model.accepts_cache
    answers, result = decode_text(model, tokenizer, ["abc"], gen_length=8, policy="threshold:tau=0.5")
    assert not (result.tokens == model.mask_token_id).any()
    from transformers import DynamicCache

    with pytest.raises(CacheNotSupportedError, match="remote code.*cache='none'"):
        model(torch.tensor([[4, 5]]), past_key_values=DynamicCache())


def test_generate_cli_on_a_saved_model(tmp_path, capsys):
    save_tiny("llama", tmp_path)
    assert main(["generate", "--model", str(tmp_path), "abc", "--gen-length", "16", "--block-length", "8",
                 "--policy", "threshold:tau=0.5", "--stop", "eotp"]) == 0
    plain = capsys.readouterr().out.strip()
    assert main(["generate", "--model", str(tmp_path), "abc", "--gen-length", "16", "--block-length", "8",
                 "--policy", "threshold:tau=0.5", "--stop", "eotp", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["answer"] == plain
    assert record["components"]["policy"]["params"] == {"tau": 0.5} and record["nfe"] >= 1


def test_generate_cli_reports_bad_input(tmp_path, capsys):
    save_tiny("llama", tmp_path)
    assert main(["generate", "--model", str(tmp_path), "abc", "--gen-length", "16", "--block-length", "5"]) == 2
    assert "gen_length=16 must be a multiple of block_length=5" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path / "missing"), "abc"]) == 2


def test_adapter_is_a_denoiser_model(saved):
    model, _ = load(saved[0])
    assert isinstance(model, TransformersDenoiser) and isinstance(model, unmask.DenoiserModel)


# The fields of Dream-7B-Instruct's config.json that decide how it is loaded and decoded.
DREAM_7B_CONFIG = {"architectures": ["DreamModel"], "model_type": "Dream", "mask_token_id": 151666,
                   "eos_token_id": 151643, "pad_token_id": 151643, "bos_token_id": 151643,
                   "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"}}


@pytest.mark.parametrize("config, shifted", [
    (DREAM_7B_CONFIG, True),
    ({**DREAM_7B_CONFIG, "model_type": "dream"}, True),
    ({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}, True),
    ({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, False),
    ({**DREAM_7B_CONFIG, "shift_logits": False}, False),
])
def test_next_token_shift_is_detected_in_any_case(config, shifted):
    from transformers import PretrainedConfig

    from unmask.contrib.models.transformers import keeps_next_token_shift

    assert keeps_next_token_shift(config) is shifted
    assert keeps_next_token_shift(PretrainedConfig(**config)) is shifted


def test_dtype_and_shift_options_reach_the_model():
    model, _ = load("reference", dtype="bfloat16", shift_logits=True)
    assert next(model.model.parameters()).dtype == torch.bfloat16 and model.shift_logits
    with pytest.raises(ValueError, match="dtype must be auto or one of float32"):
        load("reference", dtype="int8")
    assert main(["generate", "copy: ada ben", "--dtype", "bfloat16", "--no-shift-logits", "--gen-length", "8",
                 "--block-length", "8"]) == 0


class _Wrapped(torch.nn.Module):
    """A transformers model whose forward takes the KV cache under another argument name."""

    def __init__(self, inner, name):
        super().__init__()
        self.inner, self.name = inner, name
        self.seen = []

    def forward_cache(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=None):
        self.seen.append(cache is not None)
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          **{self.name: cache}, use_cache=use_cache)

    def forward_none(self, input_ids, attention_mask=None, position_ids=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_the_cache_reaches_a_forward_that_names_it_cache(tmp_path, cache):
    """transformers 5.24 renamed past_key_values to cache: the adapter finds either by signature and both
    decode the same tokens as the installed release's own argument."""
    import inspect

    from unmask.contrib.models.transformers import cache_argument

    model, tokenizer = load(save_tiny("llama", tmp_path / "llama"))
    native = cache_argument(model.model.forward)
    assert native in ("past_key_values", "cache")
    wrapped = _Wrapped(model.model, native)
    wrapped.forward = wrapped.forward_cache
    renamed = TransformersDenoiser(model=wrapped, mask_token_id=model.mask_token_id, eos_token_id=model.eos_token_id)
    assert renamed.cache_argument == "cache" and renamed.accepts_cache
    settings = dict(gen_length=16, block_length=8, policy="threshold:tau=0.5", cache=cache)
    expected = decode_text(model, tokenizer, ["abc", "12+3="], **settings)[1]
    got = decode_text(renamed, tokenizer, ["abc", "12+3="], **settings)[1]
    assert torch.equal(got.tokens, expected.tokens) and any(wrapped.seen)
    wrapped.forward = wrapped.forward_none
    assert "cache" not in inspect.signature(wrapped.forward).parameters
    plain = TransformersDenoiser(model=wrapped, mask_token_id=model.mask_token_id, eos_token_id=model.eos_token_id)
    assert not plain.accepts_cache
    with pytest.raises(ValueError, match="needs a model that takes a KV cache"):
        decode_text(plain, tokenizer, ["abc"], **settings)
