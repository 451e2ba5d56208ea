"""Block-causal models (SDAR, Fast-dLLM v2, LLaDA 2.0): the attention mask, blocks counted from position 0,
the exact cache of finished blocks, and every policy decoding through them unchanged."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import unmask
from unmask.contrib.models.tiny import tiny_denoiser
from unmask.contrib.models.transformers import block_causal_mask
from unmask.core.engine import block_columns, pad_prompts
from unmask.testing import RecordingModel

BLOCK = 4
# 16 prompts of lengths 1-16: every residue modulo the block, so each row's answer starts at its own column.
PROMPTS = [[5 + (row * 7 + i) % 30 for i in range(1 + row)] for row in range(16)]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model(request):
    """SDAR-style (no shift) and Fast-dLLM v2-style (Qwen2, logits shifted by one) block-causal models."""
    return tiny_denoiser(request.param, block_size=BLOCK)


def full_forward(model, x, real):
    """Logits of an uncached block-causal forward over the whole canvas."""
    positions = (real.cumsum(-1) - 1).clamp(min=0)
    return model(x, position_ids=positions, attention_mask=real)


def test_the_mask_is_block_causal_from_position_zero():
    keys = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]])  # two padding columns, then positions 0-5
    positions = (keys.cumsum(-1) - 1).clamp(min=0)
    seen = block_causal_mask(keys, positions, 4, torch.float32)[0, 0] == 0
    # Position 1 (column 3) sees positions 0-3, not 4-5; position 4 (column 6) sees all six; padding nothing.
    assert seen[3].tolist() == [False, False, True, True, True, True, False, False]
    assert seen[6].tolist() == [False, False] + [True] * 6


def test_later_blocks_never_change_the_logits_of_earlier_ones(model):
    x, real = pad_prompts([[7] * 6, [9] * 9], model.eos_token_id)
    x = torch.cat([x, torch.randint(4, 30, (2, 12))], 1)
    real = torch.cat([real, torch.ones(2, 12, dtype=torch.long)], 1)
    before = full_forward(model, x, real)
    changed = x.clone()
    changed[:, -5:] = torch.randint(4, 30, (2, 5))
    after = full_forward(model, changed, real)
    positions = (real.cumsum(-1) - 1).clamp(min=0)
    # Columns whose block ends before the first changed position (with a shift, the logit of the block's
    # first position comes from the column before, which is in an earlier block too).
    changed_from = positions[:, -5]
    earlier = (positions // BLOCK < changed_from[:, None] // BLOCK) & real.bool()
    earlier[:, -5:] = False
    assert torch.allclose(before[earlier], after[earlier], atol=1e-6)
    assert not torch.allclose(before[:, -5:], after[:, -5:])


@pytest.mark.parametrize("policy", ["topk", "threshold:tau=0.3"])
def test_exact_cache_gives_the_uncached_logits_and_one_more_forward_per_finished_block(model, policy):
    """Each step's block logits under the exact cache equal an uncached forward over the whole canvas
    (float32, atol 1e-5); the tokens equal the uncached decode's; forwards = steps + 1 per block but the last
    (a shifted model's storing forward also gives the next block's first token, which uncached costs one)."""
    gaps = []

    def compare(view):  # (after the step: the canvas the forward saw had this step's commits masked)
        seen = view.x.masked_fill(view.committed, model.mask_token_id)
        real = (torch.arange(seen.shape[1])[None] >= (seen == model.eos_token_id).cumprod(1).sum(1)[:, None])
        full = full_forward(model, seen, real.long())[:, view.block_start:view.block_end]
        rows = view.row_active
        gaps.append(float((full[rows] - view.logits[rows]).abs().max()))

    cached = unmask.decode(model, PROMPTS, gen_length=16, block_length=BLOCK, policy=policy, cache="exact",
                           on_step=compare)
    plain = unmask.decode(model, PROMPTS, gen_length=16, block_length=BLOCK, policy=policy, cache="none")
    assert gaps and max(gaps) < 1e-5
    assert torch.equal(cached.tokens, plain.tokens)
    lengths = torch.tensor([len(p) for p in PROMPTS])
    blocks = torch.tensor([len(block_columns(int(n), 16, BLOCK, aligned=True)) for n in lengths])
    # A shifted model's next first token comes from the storing forward; uncached it costs one forward too.
    assert torch.equal(cached.nfe, plain.nfe + (0 if model.shift_logits else blocks - 1))
    if policy == "topk":  # one token per step, over the canvas up to the end of the answer's last block
        assert torch.equal(plain.nfe, -(-(lengths + 16) // BLOCK) * BLOCK - lengths)


@pytest.mark.parametrize("policy", ["threshold:tau=0.3", "learn2pd"])
def test_blocks_finish_in_order_and_a_batch_decodes_as_each_row_alone(model, policy):
    """Learn2PD reads the whole block (its filter's features): a row's blocks are its own model's blocks, the
    first holding the prompt's end, whatever rows share the batch."""
    result = unmask.decode(model, PROMPTS, gen_length=16, block_length=BLOCK, policy=policy, stop="eotp")
    for row, prompt in enumerate(PROMPTS):
        alone = unmask.decode(model, [prompt], gen_length=16, block_length=BLOCK, policy=policy, stop="eotp")
        assert torch.equal(alone.tokens[0], result.tokens[row]) and alone.nfe[0] == result.nfe[row]
        steps = result.commit_step[row]
        blocks = block_columns(len(prompt), 16, BLOCK, aligned=True)
        last = -1
        for start, end in blocks:
            block = steps[start - len(prompt):end - len(prompt)]
            block = block[block >= 0]  # cut by EoTP: never committed
            if len(block):
                assert int(block.min()) > last, f"row {row}: a block began before the one before it finished"
                last = int(block.max())


def test_rows_of_every_prompt_length_share_each_step_forward():
    """Prompts of lengths 1-16 (every residue modulo the block): one batch, one forward per step for all
    active rows, each row's answer from its own column of the shared blocks."""
    model = RecordingModel(tiny_denoiser("llama", block_size=BLOCK))
    views = []
    result = unmask.decode(model, PROMPTS, gen_length=16, block_length=BLOCK, policy="threshold:tau=0.3",
                           cache="none", on_step=views.append)
    assert len(model.fed) == len(views)
    starts = views[0].answer_starts
    assert torch.equal(starts - starts.min(), torch.tensor([len(p) % BLOCK for p in PROMPTS]) - min(
        len(p) % BLOCK for p in PROMPTS))
    assert not (result.tokens == model.mask_token_id).any()


@pytest.mark.parametrize("policy", ["topk", "threshold:tau=0.9", "entropy_bound", "entropy_threshold", "margin",
                                    "local_leap", "freedave:draft_steps=3", "learn2pd", "random"])
@pytest.mark.parametrize("stop", ["none", "eotp", "prophet"])
def test_every_policy_and_stop_decodes_a_block_causal_model(policy, stop):
    model = tiny_denoiser("llama", block_size=32)
    result = unmask.decode(model, PROMPTS[:5], gen_length=64, block_length=32, policy=policy, stop=stop)
    assert not (result.tokens == model.mask_token_id).any()
    assert result.components["cache"]["name"] == "exact"


def test_the_oracle_reproduces_vanilla_on_a_block_model_whatever_each_answer_start():
    """The oracle holds a reference per row, aligned at each row's own answer start."""
    from unmask.strategies.oracle import OraclePolicy

    model = tiny_denoiser("llama", block_size=BLOCK)
    vanilla = unmask.decode(model, PROMPTS, gen_length=16, block_length=BLOCK)
    oracle = unmask.decode(model, PROMPTS, gen_length=16, block_length=BLOCK,
                           policy=OraclePolicy(reference=vanilla.tokens))
    assert torch.equal(oracle.tokens, vanilla.tokens)


def test_caches_refuse_the_models_they_do_not_fit():
    block_model, plain_model = tiny_denoiser("llama", block_size=BLOCK), tiny_denoiser("llama")
    for cache in ("prefix", "dual"):
        with pytest.raises(ValueError, match="block-causally.*cache='exact'"):
            unmask.decode(block_model, PROMPTS[:2], gen_length=8, block_length=BLOCK, cache=cache)
    with pytest.raises(ValueError, match="cache exact needs a block-causal model"):
        unmask.decode(plain_model, PROMPTS[:2], gen_length=8, block_length=BLOCK, cache="exact")
    with pytest.raises(ValueError, match="block_length=8: .* blocks of 4 positions"):
        unmask.decode(block_model, PROMPTS[:2], gen_length=16, block_length=8)
    assert unmask.decode(plain_model, PROMPTS[:2], gen_length=8).components["cache"]["name"] == "none"


def greedy(logits, mask_id):
    """Temperature 0 as the engine reads it: the argmax (the runner-up where that is [MASK], which would leave
    the position masked) and its softmax probability in float64, as the reference samplers compute it."""
    probability = logits.double().softmax(-1)
    probability[..., mask_id] = -1.0
    confidence, x0 = probability.max(-1)
    return confidence, x0


def sdar_loop(model, prompt, gen_length, steps, rule, tau=0.85):
    """SDAR's ``block_diffusion_generate`` (JetAstra/SDAR, generate.py) re-implemented for one prompt, greedy
    (temperature 0 as argmax; conf = the argmax's probability), without a cache: every step runs the
    canvas up to the block's end under the block-causal mask. Rules: ``low_confidence_static`` (the
    schedule's top n) and ``low_confidence_dynamic`` (every conf > tau if at least n, else the top n)."""
    blocks = -(-(len(prompt) + gen_length) // BLOCK)
    x = torch.full((1, blocks * BLOCK), model.mask_token_id)
    x[0, :len(prompt)] = torch.tensor(prompt)
    per_step = torch.full((steps,), BLOCK // steps) + (torch.arange(steps) < BLOCK % steps)
    for block in range(len(prompt) // BLOCK, blocks):
        start, end = block * BLOCK, (block + 1) * BLOCK
        for step in range(steps + 1):
            masked = x[0, start:end] == model.mask_token_id
            if not masked.any():
                break
            logits = full_forward(model, x[:, :end], torch.ones(1, end, dtype=torch.long))[0, start:end]
            probability, x0 = greedy(logits, model.mask_token_id)
            confidence = torch.where(masked, probability, float("-inf"))
            top = torch.zeros_like(masked)
            top[confidence.topk(int(per_step[step])).indices] = True
            sure = confidence > tau
            commit = sure if rule == "low_confidence_dynamic" and sure.sum() >= per_step[step] else top
            x[0, start:end] = torch.where(commit & masked, x0, x[0, start:end])
    return x[0, len(prompt):len(prompt) + gen_length]


# tau 0.03: about half of this random model's argmax probabilities pass it (SDAR's 0.85 would pass none).
@pytest.mark.parametrize("rule, policy", [("low_confidence_static", "topk"),
                                          ("low_confidence_dynamic", "topk + threshold:tau=0.03")])
def test_sdar_reference_loop_gives_the_tokens_of_the_matching_policy(rule, policy):
    """16 prompts of varied length, batched, against the reference loop row by row (block 4, 4 steps per
    block, SDAR's README setting). The dynamic rule is the union of the schedule's top n and tau."""
    model = tiny_denoiser("llama", block_size=BLOCK, seed=1)
    with torch.inference_mode():
        expected = torch.stack([sdar_loop(model, prompt, 16, BLOCK, rule, tau=0.03) for prompt in PROMPTS])
    result = unmask.decode(model, PROMPTS, gen_length=16, block_length=BLOCK, steps=16, policy=policy)
    assert torch.equal(result.tokens, expected)
    if rule == "low_confidence_dynamic":  # the threshold committed several tokens in some steps
        static = unmask.decode(model, PROMPTS, gen_length=16, block_length=BLOCK, steps=16, policy="topk")
        assert (result.nfe < static.nfe).any() and not torch.equal(result.tokens, static.tokens)


@pytest.mark.parametrize("layout, family, shift", [("sdar", "Qwen3ForCausalLM", False),
                                                   ("fast_dllm_v2", "Qwen2ForCausalLM", True)])
def test_sdar_and_fast_dllm_v2_checkpoints_load_natively_with_their_block_size(layout, family, shift, tmp_path):
    from unmask.contrib.models.tiny import save_tiny_block_diffusion

    directory = save_tiny_block_diffusion(layout, tmp_path / layout, block_size=BLOCK)
    model, tokenizer = unmask.load(str(directory))  # no remote code: their modelling files are not even there
    assert (type(model.model).__name__, model.block_size, model.shift_logits) == (family, BLOCK, shift)
    assert model.mask_token_id == tokenizer.mask_token_id and model.accepts_cache
    result = unmask.decode(model, PROMPTS[:6], gen_length=16, block_length=BLOCK, policy="threshold:tau=0.3")
    assert result.components["cache"]["name"] == "exact"
    assert torch.equal(result.tokens, unmask.decode(model, PROMPTS[:6], gen_length=16, block_length=BLOCK,
                                                    policy="threshold:tau=0.3", cache="none").tokens)
    with pytest.raises(ValueError, match="trained with blocks of 4"):
        unmask.load(str(directory), block_size=8)


def test_a_block_causal_llama_without_a_mask_token_fails_at_load_naming_it(tmp_path):
    import json

    from transformers import LlamaConfig, LlamaForCausalLM

    from unmask.contrib.models.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.mask_token = None
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                 num_attention_heads=2, eos_token_id=tokenizer.eos_token_id)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "block_size": BLOCK}))
    with pytest.raises(ValueError, match="no mask token.*mask_token_id"):
        unmask.load(str(tmp_path))


def test_llada2_needs_the_users_trust_and_takes_its_block_size_at_load(tmp_path):
    from unmask.contrib.models.tiny import save_tiny_block_diffusion

    directory = save_tiny_block_diffusion("llada2", tmp_path / "llada2")
    with pytest.raises(ValueError, match="LLaDA 2.0.*trust_remote_code=True"):
        unmask.load(str(directory))
    model, tokenizer = unmask.load(str(directory), trust_remote_code=True, block_size=BLOCK)
    assert model.block_size == BLOCK and not model.accepts_cache
    result = unmask.decode(model, PROMPTS[:3], gen_length=8, block_length=BLOCK)
    assert result.components["cache"]["name"] == "none" and not (result.tokens == model.mask_token_id).any()
    assert unmask.load(str(directory), trust_remote_code=True)[0].block_size == 32
    from unmask.contrib.models.tiny import save_tiny

    with pytest.raises(ValueError, match="block_size: the model .* is not a block-diffusion checkpoint"):
        unmask.load(str(save_tiny("llama", tmp_path / "llama")), block_size=4)


def fast_dllm_v2_loop(model, prompt, gen_length, sub_block, tau):
    """Fast-dLLM v2's ``batch_sample`` (NVlabs/Fast-dLLM, v2/generation_functions.py) re-implemented for one
    prompt, greedy, without a cache (every forward runs the canvas up to the block's end): a block that
    starts at an answer position takes its first token by argmax from the position before (the prefill's or
    the previous block's storing forward); then its sub-blocks, left to right, each until it has no mask:
    commit every masked position of the sub-block with probability > tau, and always its most probable one.
    The adapter's logits are already shifted (column i predicts position i)."""
    size = model.block_size
    blocks = -(-(len(prompt) + gen_length) // size)
    x = torch.full((1, blocks * size), model.mask_token_id)
    x[0, :len(prompt)] = torch.tensor(prompt)

    def logits_up_to(end):
        return full_forward(model, x[:, :end], torch.ones(1, end, dtype=torch.long))[0]

    for block in range(len(prompt) // size, blocks):
        start, end = block * size, (block + 1) * size
        if start >= len(prompt):
            x[0, start] = greedy(logits_up_to(start + 1)[start], model.mask_token_id)[1]
        for sub in range(start, end, sub_block):
            while (masked := x[0, sub:sub + sub_block] == model.mask_token_id).any():
                probability, x0 = greedy(logits_up_to(end)[sub:sub + sub_block], model.mask_token_id)
                confidence = torch.where(masked, probability, float("-inf"))
                commit = (confidence > tau) | (torch.arange(sub_block) == confidence.argmax())
                x[0, sub:sub + sub_block] = torch.where(commit & masked, x0, x[0, sub:sub + sub_block])
    return x[0, len(prompt):len(prompt) + gen_length]


def test_fast_dllm_v2_reference_loop_gives_the_tokens_of_threshold_on_sub_blocks():
    """Blocks of 8 decoded as sub-blocks of 4 (Fast-dLLM v2's 32 and 8, scaled down), 16 prompts of varied
    length, batched, with the exact cache and without."""
    model = tiny_denoiser("qwen2", block_size=8, seed=2)
    with torch.inference_mode():
        expected = torch.stack([fast_dllm_v2_loop(model, prompt, 16, 4, tau=0.03) for prompt in PROMPTS])
    for cache in ("exact", "none"):
        result = unmask.decode(model, PROMPTS, gen_length=16, block_length=4, policy="threshold:tau=0.03",
                               cache=cache)
        assert torch.equal(result.tokens, expected), cache
    with pytest.raises(ValueError, match="block_length=3: .* a divisor of it"):
        unmask.decode(model, PROMPTS[:1], gen_length=12, block_length=3)


@given(st.lists(st.integers(1, 40), min_size=1, max_size=6), st.sampled_from([(4, 4), (8, 4), (8, 8), (16, 8)]),
       st.integers(1, 6))
@settings(max_examples=60, deadline=None)
def test_the_layout_keeps_columns_and_positions_together_modulo_the_block(lengths, sizes, blocks):
    """Every row left-padded by whole blocks; its prompt then its masks up to the end of its answer's last
    model block (EOS after); blocks shared by all rows, each inside one model block, covering every answer."""
    from unmask.core.layout import lay_out
    from unmask.core.model_info import ModelInfo

    size, block_length = sizes
    gen_length = blocks * block_length
    info = ModelInfo(mask_token_id=0, eos_token_id=1, vocab_size=50, shift_logits=False, block_size=size,
                     max_positions=None, accepts_cache=True)
    prompts = [[2 + (row + i) % 40 for i in range(n)] for row, n in enumerate(lengths)]
    layout = lay_out(*pad_prompts(prompts, 1), info, gen_length, block_length)
    for row, prompt in enumerate(prompts):
        start, end = int(layout.answer_start[row]), int(layout.row_end[row])
        pad = start - len(prompt)
        assert pad % size == 0 and (end - pad) % size == 0
        assert layout.x[row, pad:start].tolist() == prompt and not layout.real[row, :pad].any()
        assert (layout.x[row, start:end] == 0).all() and (layout.x[row, end:] == 1).all()
        assert end - start >= gen_length and end - start - gen_length < size
    edges = [b for block in layout.blocks for b in block]
    assert edges[0] <= layout.gen_start and edges[-1] == layout.x.shape[1]
    assert all(a[1] == b[0] for a, b in zip(layout.blocks, layout.blocks[1:]))
    assert all(start // size == (end - 1) // size and end - start <= block_length for start, end in layout.blocks)
