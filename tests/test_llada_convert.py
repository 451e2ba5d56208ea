"""LLaDA's original layout converts to Llama: the converted model's logits equal a direct computation of
LLaDA's forward (RMSNorm, half-split rotary, bidirectional attention, SwiGLU) on the same weights."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import unmask
from unmask.contrib.models.llada import convert_llada_checkpoint, convert_llada_key, llama_config_from_llada
from unmask.contrib.models.transformers import decode_text, load
from unmask.contrib.models.tiny import tiny_tokenizer

LLADA_CONFIG = {
    "d_model": 32, "n_heads": 4, "n_kv_heads": 2, "n_layers": 2, "mlp_hidden_size": 48, "vocab_size": 47,
    "embedding_size": 47, "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "max_sequence_length": 128,
    "include_bias": False, "weight_tying": False, "mask_token_id": 1, "eos_token_id": 0,
}


def llada_state_dict(config, seed=0):
    generator = torch.Generator().manual_seed(seed)
    d, hd = config["d_model"], config["d_model"] // config["n_heads"]
    kv, mlp, vocab = config["n_kv_heads"] * hd, config["mlp_hidden_size"], config["embedding_size"]

    def weight(*shape):
        return torch.randn(shape, generator=generator) * 0.2

    state = {"model.transformer.wte.weight": weight(vocab, d), "model.transformer.ln_f.weight": 1 + weight(d),
             "model.transformer.ff_out.weight": weight(vocab, d)}
    for i in range(config["n_layers"]):
        block = f"model.transformer.blocks.{i}."
        state.update({
            block + "q_proj.weight": weight(d, d), block + "k_proj.weight": weight(kv, d),
            block + "v_proj.weight": weight(kv, d), block + "attn_out.weight": weight(d, d),
            block + "ff_proj.weight": weight(mlp, d), block + "up_proj.weight": weight(mlp, d),
            block + "ff_out.weight": weight(d, mlp), block + "attn_norm.weight": 1 + weight(d),
            block + "ff_norm.weight": 1 + weight(d),
        })
    return state


def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rotate(x, positions, theta):
    half = x.shape[-1] // 2
    frequencies = 1.0 / theta ** (torch.arange(half, dtype=torch.float32) / half)
    angles = positions[:, None].float() * frequencies[None, :]
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    x1, x2 = x[..., :half], x[..., half:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def llada_forward(state, config, input_ids):
    """LLaDA's forward written out from its modeling code, for one unpadded sequence."""
    heads, kv_heads, eps = config["n_heads"], config["n_kv_heads"], config["rms_norm_eps"]
    positions = torch.arange(input_ids.shape[1])
    h = state["model.transformer.wte.weight"][input_ids]
    for i in range(config["n_layers"]):
        w = {k.split(f"blocks.{i}.")[1]: v for k, v in state.items() if f"blocks.{i}." in k}
        a = rms_norm(h, w["attn_norm.weight"], eps)
        batch, length, _ = a.shape
        q = (a @ w["q_proj.weight"].T).view(batch, length, heads, -1).transpose(1, 2)
        k = (a @ w["k_proj.weight"].T).view(batch, length, kv_heads, -1).transpose(1, 2)
        v = (a @ w["v_proj.weight"].T).view(batch, length, kv_heads, -1).transpose(1, 2)
        q, k = rotate(q, positions, config["rope_theta"]), rotate(k, positions, config["rope_theta"])
        k, v = k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)
        attention = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1) @ v  # no causal mask
        h = h + attention.transpose(1, 2).reshape(batch, length, -1) @ w["attn_out.weight"].T
        m = rms_norm(h, w["ff_norm.weight"], eps)
        h = h + (F.silu(m @ w["ff_proj.weight"].T) * (m @ w["up_proj.weight"].T)) @ w["ff_out.weight"].T
    h = rms_norm(h, state["model.transformer.ln_f.weight"], eps)
    return h @ state["model.transformer.ff_out.weight"].T


def write_llada_checkpoint(directory, state):
    directory.mkdir()
    keys = sorted(state)
    save_file({k: state[k] for k in keys[: len(keys) // 2]}, directory / "model-00001-of-00002.safetensors")
    save_file({k: state[k] for k in keys[len(keys) // 2:]}, directory / "model-00002-of-00002.safetensors")
    (directory / "config.json").write_text(json.dumps({**LLADA_CONFIG, "auto_map": {"AutoModel": "modeling_llada.X"}}))
    (directory / "modeling_llada.py").write_text("raise RuntimeError('remote code must not run')\n")
    tiny_tokenizer().save_pretrained(directory)


def test_key_mapping():
    assert convert_llada_key("model.transformer.blocks.3.ff_proj.weight") == "model.layers.3.mlp.gate_proj.weight"
    assert convert_llada_key("model.transformer.blocks.0.attn_out.weight") == "model.layers.0.self_attn.o_proj.weight"
    assert convert_llada_key("model.transformer.ff_out.weight") == "lm_head.weight"
    assert convert_llada_key("transformer.wte.weight") == "model.embed_tokens.weight"
    with pytest.raises(KeyError, match="unexpected key"):
        convert_llada_key("model.transformer.blocks.0.mystery.weight")


def test_converted_logits_equal_a_direct_llada_forward():
    from transformers import LlamaForCausalLM

    state = llada_state_dict(LLADA_CONFIG)
    model = LlamaForCausalLM(llama_config_from_llada(LLADA_CONFIG)).eval()
    model.load_state_dict(unmask.contrib.models.llada.convert_llada_state_dict(state))
    input_ids = torch.randint(0, 47, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = llada_forward(state, LLADA_CONFIG, input_ids)
        actual = model(input_ids).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_checkpoint_conversion_loads_and_decodes_without_remote_code(tmp_path):
    state = llada_state_dict(LLADA_CONFIG)
    write_llada_checkpoint(tmp_path / "llada", state)
    target = convert_llada_checkpoint(tmp_path / "llada", tmp_path / "llama")
    assert not (target / "modeling_llada.py").exists()
    model, tokenizer = load(target)
    assert (model.mask_token_id, model.eos_token_id, model.shift_logits) == (1, 0, False)
    input_ids = torch.tensor([[4, 5, 6, 1, 1]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids), llada_forward(state, LLADA_CONFIG, input_ids), atol=1e-5, rtol=1e-5)
    answers, result = decode_text(model, tokenizer, ["abc"], gen_length=8, policy="threshold:tau=0.5")
    assert not (result.tokens == 1).any()
    convert_llada_checkpoint(tmp_path / "llada", target)  # an earlier conversion is replaced
    with pytest.raises(ValueError, match="holds the input"):
        convert_llada_checkpoint(tmp_path / "llada", tmp_path)
    unrelated = tmp_path / "notes"
    unrelated.mkdir()
    (unrelated / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="did not write"):
        convert_llada_checkpoint(tmp_path / "llada", unrelated)
    assert [p.name for p in unrelated.iterdir()] == ["keep.txt"]


def test_convert_cli(tmp_path, capsys):
    from unmask.contrib.cli import main

    write_llada_checkpoint(tmp_path / "llada", llada_state_dict(LLADA_CONFIG))
    assert main(["convert-llada", str(tmp_path / "llada"), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()
    model, _ = unmask.load(tmp_path / "out")
    assert model.mask_token_id == 1


@pytest.mark.parametrize("option, value", [
    ("scale_logits", True), ("input_emb_norm", True), ("layer_norm_type", "default"), ("include_bias", True),
    ("include_qkv_bias", True), ("multi_query_attention", True), ("attention_layer_norm", True),
    ("block_group_size", 2), ("block_type", "sequential"),
])
def test_options_a_llama_cannot_reproduce_are_refused(option, value):
    with pytest.raises(ValueError, match=f"{option}=.*would change the logits"):
        llama_config_from_llada({**LLADA_CONFIG, option: value})
    llama_config_from_llada({**LLADA_CONFIG, "layer_norm_type": "rms", "block_type": "llama", "block_group_size": 1})
