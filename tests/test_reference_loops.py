"""``topk`` and ``threshold`` decode token-for-token like straightforward re-statements of the reference
loops (ML-GSAI/LLaDA generate.py and NVlabs/Fast-dLLM), batched with left padding, temperature 0."""

import pytest
import torch

import unmask
from unmask import pad_prompts


def _canvas(model, prompts, gen_length):
    input_ids, attention_mask = pad_prompts(prompts, model.eos_token_id)
    batch = input_ids.shape[0]
    x = torch.cat([input_ids, torch.full((batch, gen_length), model.mask_token_id)], dim=1)
    attention = torch.cat([attention_mask, torch.ones(batch, gen_length, dtype=torch.long)], dim=1)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    return x, attention, positions, input_ids.shape[1]


def _predict(model, x, attention, positions):
    logits = model(x, attention_mask=attention, position_ids=positions)
    x0 = logits.argmax(-1)
    confidence = torch.softmax(logits.to(torch.float64), -1).gather(-1, x0[..., None]).squeeze(-1)
    return x0, confidence


def llada_generate(model, prompts, *, steps, gen_length, block_length, rank_block=False):
    x, attention, positions, prompt_length = _canvas(model, prompts, gen_length)
    mask_id = model.mask_token_id
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    nfe = 0
    for block in range(num_blocks):
        start = prompt_length + block * block_length
        end = start + block_length
        block_masked = (x[:, start:end] == mask_id).sum(1)
        num_transfer = torch.zeros(x.shape[0], steps_per_block, dtype=torch.long)
        for row in range(x.shape[0]):
            base, remainder = divmod(int(block_masked[row]), steps_per_block)
            num_transfer[row] = base
            num_transfer[row, :remainder] += 1
        for i in range(steps_per_block):
            mask_index = x == mask_id
            x0, p = _predict(model, x, attention, positions)
            nfe += 1
            p[:, end:] = float("-inf")
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, p, torch.tensor(float("-inf")))
            transfer = torch.zeros_like(x, dtype=torch.bool)
            for row in range(x.shape[0]):
                if rank_block:  # Fast-dLLM's loops: the block's confidences alone are ranked
                    _, chosen = torch.topk(confidence[row, start:end], k=int(num_transfer[row, i]))
                    chosen = chosen + start
                else:
                    _, chosen = torch.topk(confidence[row], k=int(num_transfer[row, i]))
                transfer[row, chosen] = True
            x[transfer] = x0[transfer]
    return x[:, prompt_length:], nfe


def fast_dllm_generate(model, prompts, *, gen_length, block_length, threshold):
    x, attention, positions, prompt_length = _canvas(model, prompts, gen_length)
    mask_id = model.mask_token_id
    nfe = 0
    for block in range(gen_length // block_length):
        start = prompt_length + block * block_length
        end = start + block_length
        while (x[:, start:end] == mask_id).any():
            x0, p = _predict(model, x, attention, positions)
            nfe += 1
            mask_index = x == mask_id
            mask_index[:, end:] = False
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, p, torch.tensor(float("-inf")))
            transfer = torch.zeros_like(x, dtype=torch.bool)
            for row in range(x.shape[0]):
                count = int(mask_index[row].sum())
                if count == 0:
                    continue
                values, chosen = torch.topk(confidence[row], k=count)
                transfer[row, chosen[0]] = True
                for k in range(1, count):
                    if values[k] >= threshold:
                        transfer[row, chosen[k]] = True
            x[transfer] = x0[transfer]
    return x[:, prompt_length:], nfe


@pytest.mark.parametrize("steps,gen_length,block_length", [(32, 32, 8), (16, 32, 8), (12, 24, 24), (8, 24, 6)])
def test_topk_matches_llada_reference(model, prompts, steps, gen_length, block_length):
    expected, reference_nfe = llada_generate(model, prompts, steps=steps, gen_length=gen_length, block_length=block_length)
    result = unmask.decode(model, prompts, policy="topk", steps=steps, gen_length=gen_length, block_length=block_length)
    assert torch.equal(result.tokens, expected)
    assert result.nfe.tolist() == [reference_nfe] * len(prompts)


@pytest.mark.parametrize("tau", [0.5, 0.7, 0.9])
@pytest.mark.parametrize("block_length", [8, 16])
def test_threshold_matches_fast_dllm_reference(model, prompts, tau, block_length):
    for prompt in prompts:  # one row at a time: the reference counts NFE for the whole batch
        expected, reference_nfe = fast_dllm_generate(model, [prompt], gen_length=32, block_length=block_length, threshold=tau)
        result = unmask.decode(model, [prompt], policy=f"threshold:tau={tau}", gen_length=32, block_length=block_length)
        assert torch.equal(result.tokens, expected)
        assert int(result.nfe[0]) == reference_nfe
    expected, _ = fast_dllm_generate(model, prompts, gen_length=32, block_length=block_length, threshold=tau)
    batched = unmask.decode(model, prompts, policy=f"threshold:tau={tau}", gen_length=32, block_length=block_length)
    assert torch.equal(batched.tokens, expected)


def test_threshold_is_parallel_on_the_fake_model(model, prompts):
    """Guards the reference tests above against a degenerate model that never commits in parallel."""
    result = unmask.decode(model, prompts, policy="threshold:tau=0.7", gen_length=32, block_length=8)
    assert result.nfe.float().mean() < 32


class Sharpened(torch.nn.Module):
    """A model sure of every prediction: most confidences are exactly 1.0 in float64, so ranking is all ties."""

    def __init__(self, model, scale):
        super().__init__()
        self.inner, self.scale = model, scale
        self.mask_token_id, self.eos_token_id, self.vocab_size = model.mask_token_id, model.eos_token_id, model.vocab_size

    def forward(self, input_ids, **kwargs):
        return self.inner(input_ids, **kwargs) * self.scale


def test_near_saturated_confidences_are_softmax_in_float64():
    """exp(l - logsumexp) rounds a sure prediction to exactly 1.0 where softmax in float64 stays below it."""
    from unmask.core.scoring import predict as _predict

    logits = torch.tensor([[[40.0, 0.0, 5.0], [40.0, 0.0, 4.0]]])
    _, confidence = _predict(logits, 0.0, torch.Generator(), mask_id=1)
    expected = torch.softmax(logits.double(), -1)[..., 0]
    assert torch.equal(confidence, expected)
    assert (confidence < 1).all() and confidence[0, 0] < confidence[0, 1]
    rounded = torch.exp(logits.double()[..., 0] - torch.logsumexp(logits.double(), -1))
    assert (rounded == 1).all()  # what the subtraction gave: a tie that ranks by position


@pytest.mark.parametrize("steps,gen_length,block_length", [(16, 32, 8), (8, 24, 6), (12, 24, 24)])
def test_ties_are_ranked_over_the_block_as_fast_dllm_ranks_them(model, prompts, steps, gen_length, block_length):
    sharp = Sharpened(model, 1000.0)
    x, attention, positions, _ = _canvas(model, prompts, gen_length)
    _, confidence = _predict(sharp, x, attention, positions)
    assert (confidence == 1).float().mean() > 0.5  # ties everywhere
    expected, _ = llada_generate(sharp, prompts, steps=steps, gen_length=gen_length, block_length=block_length,
                                 rank_block=True)
    result = unmask.decode(sharp, prompts, policy="topk", steps=steps, gen_length=gen_length, block_length=block_length)
    assert torch.equal(result.tokens, expected)
