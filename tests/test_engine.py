import json

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import unmask
from unmask import DecodeConfig, linear_schedule
from unmask.contrib.models.tiny import tiny_denoiser
from unmask.core.types import StopDecision
from unmask.testing import FakeDenoiser, RecordingModel, decode_configs


def test_config_defaults_to_one_token_per_step():
    config = DecodeConfig(gen_length=64, block_length=16)
    assert config.num_steps == 64 and config.num_blocks == 4 and config.steps_per_block == 16


@pytest.mark.parametrize(
    "settings_,words",
    [
        ({"gen_length": 30, "block_length": 8}, ["gen_length=30", "block_length=8"]),
        ({"gen_length": 32, "block_length": 8, "steps": 6}, ["steps=6", "4"]),
        ({"gen_length": 0}, ["gen_length"]),
        ({"temperature": -1.0}, ["temperature"]),
    ],
)
def test_invalid_configs_name_the_values(settings_, words):
    with pytest.raises(ValueError) as error:
        DecodeConfig(**settings_)
    for word in words:
        assert word in str(error.value)


@given(counts=st.lists(st.integers(0, 64), min_size=1, max_size=4), steps=st.integers(1, 32))
def test_linear_schedule_splits_evenly_extras_first(counts, steps):
    schedule = linear_schedule(torch.tensor(counts), steps)
    assert schedule.sum(1).tolist() == counts
    assert ((schedule.max(1).values - schedule.min(1).values) <= 1).all()
    assert (schedule[:, 1:] <= schedule[:, :-1]).all()


def test_decode_validates_inputs(model):
    with pytest.raises(ValueError, match="input_ids must be a 2-D integer tensor"):
        unmask.decode(model, torch.tensor([1, 2, 3]), gen_length=8)
    with pytest.raises(ValueError, match="attention_mask shape"):
        unmask.decode(model, torch.tensor([[1, 2, 3]]), attention_mask=torch.ones(1, 2, dtype=torch.long), gen_length=8)
    with pytest.raises(ValueError, match="at least one prompt"):
        unmask.decode(model, [], gen_length=8)
    with pytest.raises(unmask.SpecError, match="registered: .*topk"):
        unmask.decode(model, [[1]], gen_length=8, policy="nope")
    with pytest.raises(TypeError, match="either config or settings"):
        unmask.decode(model, [[1]], config=DecodeConfig(), gen_length=8)


def test_mask_token_id_is_required():
    class NoIds(torch.nn.Module):
        def forward(self, input_ids, **_):
            return torch.zeros(*input_ids.shape, 5)

    with pytest.raises(ValueError, match="mask_token_id is not set"):
        unmask.decode(NoIds(), [[1]], gen_length=4)


@attrs.frozen
class Nothing:
    def select(self, view):
        return torch.zeros_like(view.masked)


@attrs.frozen
class Outside:
    def select(self, view):
        return ~view.masked


@attrs.frozen
class WrongType:
    def select(self, view):
        return view.masked.long()


def test_progress_floor_commits_one_per_step(model, prompts):
    result = unmask.decode(model, prompts, policy=Nothing(), gen_length=16, block_length=8)
    assert result.nfe.tolist() == [16] * len(prompts)
    expected = unmask.decode(model, prompts, policy="topk", gen_length=16, block_length=8)
    assert torch.equal(result.tokens, expected.tokens)  # the floor is top-1 by confidence
    with pytest.raises(RuntimeError, match="committed nothing"):
        unmask.decode(model, prompts, policy=Nothing(), gen_length=16, progress_floor=False)


def test_engine_rejects_bad_commits(model):
    with pytest.raises(ValueError, match="not masked positions of the current block"):
        unmask.decode(model, [[1, 2]], policy=Outside(), gen_length=8)
    with pytest.raises(TypeError, match="bool tensor"):
        unmask.decode(model, [[1, 2]], policy=WrongType(), gen_length=8)


def test_sampling_is_seeded(model, prompts):
    def run(seed):
        return unmask.decode(model, prompts, gen_length=16, block_length=8, temperature=1.0, seed=seed).tokens

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


@settings(max_examples=25)
@given(
    config=decode_configs(),
    lengths=st.lists(st.integers(1, 6), min_size=2, max_size=4),
    policy=st.sampled_from(["topk", "threshold:tau=0.6", "entropy_bound:bound=0.5", "topk:k=3"]),
    stop=st.sampled_from([None, "eotp"]),
)
def test_batch_decodes_each_row_as_alone(config, lengths, policy, stop):
    config = attrs.evolve(config, temperature=0.0)
    model = FakeDenoiser(seed=2, eos_bias=3.0, eos_from=8)
    prompts = [[(7 * row + i) % 20 for i in range(n)] for row, n in enumerate(lengths)]
    batched = unmask.decode(model, prompts, config=config, policy=policy, stop=stop)
    for row, prompt in enumerate(prompts):
        alone = unmask.decode(model, [prompt], config=config, policy=policy, stop=stop)
        assert torch.equal(alone.tokens[0], batched.tokens[row])
        assert alone.nfe[0] == batched.nfe[row]


class Budget:
    """Finishes row r after limits[r] forwards, so rows leave the batch at different steps."""

    def __init__(self, limits):
        self.limits = torch.tensor(limits)

    def check(self, view):
        return StopDecision(done=view.nfe >= self.limits[:view.nfe.shape[0]])


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("policy", ["threshold:tau=0.5", "topk:k=2"])
def test_rows_that_need_no_forward_are_left_out_of_it(cache, policy):
    model = RecordingModel(tiny_denoiser("llama"))
    prompts, limits = [[4, 5, 6, 7, 8], [9, 10], [11, 12, 13], [14, 15], [16, 17, 18, 19]], [3, 9, 5, 20, 14]
    config = DecodeConfig(gen_length=24, block_length=8)
    batched = unmask.decode(model, prompts, config=config, policy=policy, stop=Budget(limits), cache=cache)
    # Once rows are done, forwards are given the live rows only (a refresh feeds all: later steps read it).
    rows = [fed[0] for fed in model.fed]
    assert min(rows) <= 2
    assert sum(rows) < len(rows) * len(prompts)
    for row, prompt in enumerate(prompts):
        alone = unmask.decode(model.model, [prompt], config=config, policy=policy, stop=Budget(limits[row:row + 1]),
                              cache=cache)
        assert torch.equal(alone.tokens[0], batched.tokens[row]) and alone.nfe[0] == batched.nfe[row]


def test_eotp_cuts_the_padding_and_saves_forwards(eos_model, prompts):
    plain = unmask.decode(eos_model, prompts, gen_length=32, block_length=8)
    cut = unmask.decode(eos_model, prompts, gen_length=32, block_length=8, stop="eotp")
    assert (cut.nfe < plain.nfe).all()
    assert (cut.answer_lengths < 32).all()
    for row in range(len(prompts)):
        end = int(cut.answer_lengths[row])
        assert (cut.tokens[row, end:] == eos_model.eos_token_id).all()
        assert (cut.commit_step[row, end + 1:] == -1).all()  # never computed


def test_max_nfe_caps_forwards_and_leaves_no_mask(model, prompts):
    result = unmask.decode(model, prompts, gen_length=32, block_length=8, stop="max_nfe:n=5")
    assert (result.nfe <= 5).all()
    assert not (result.tokens == model.mask_token_id).any()


def test_result_records_components_and_config(model):
    result = unmask.decode(model, [[1, 2]], gen_length=8, policy="threshold:tau=0.8", stop="eotp + max_nfe:n=4")
    assert result.components["policy"] == {"name": "threshold", "params": {"tau": 0.8}, "provider": "unmask",
                                           "version": unmask.__version__}
    assert result.components["stop"]["name"] == "any"
    assert [s["name"] for s in result.components["stop"]["params"]["stops"]] == ["eotp", "max_nfe"]
    record = json.loads(json.dumps(result.to_dict()))
    assert record["config"]["gen_length"] == 8 and record["nfe"] == result.nfe.tolist()


def test_observers_see_every_step(model):
    seen = []
    result = unmask.decode(model, [[1, 2]], gen_length=8, on_step=lambda view: seen.append(view.committed.sum()))
    assert len(seen) == int(result.nfe[0]) == 8 and all(int(n) == 1 for n in seen)


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_chunked_scoring_samples_like_llada_across_chunk_borders(temperature):
    """LLaDA's sampler (generate.py add_gumbel_noise): argmax of exp(l) / (-log u)^T with u drawn in float64 over
    the whole span; the engine scores 32 columns at a time, so a span of 70 crosses two borders."""
    from unmask.core.scoring import SCORE_COLUMNS, predict as _predict

    logits = torch.randn(2, 70, 50, generator=torch.Generator().manual_seed(1)) * 3
    logits[..., 49] = -100.0  # the mask id: never the prediction, so no runner-up rule applies
    x0, confidence = _predict(logits, temperature, torch.Generator().manual_seed(5), mask_id=49)
    expected = logits.double()
    if temperature > 0:
        uniform = torch.rand(logits.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
        expected = expected.exp() / (-torch.log(uniform)) ** temperature
    assert 70 > 2 * SCORE_COLUMNS and torch.equal(x0, expected.argmax(-1))
    torch.testing.assert_close(confidence, torch.softmax(logits.double(), -1).gather(-1, x0[..., None])[..., 0],
                               rtol=0, atol=1e-12)


def test_steps_runs_the_decode_a_step_at_a_time_and_retires_rows_between_steps():
    """``unmask.steps`` is ``decode`` paused at every step: the same result when run through, a view per
    step outside inference mode for the caller, and a retired row finished at the next step while the
    others decode exactly as before."""
    model, prompts = FakeDenoiser(seed=4), [[1, 2, 3], [4, 5], [6]]
    settings = {"gen_length": 16, "block_length": 8, "policy": "threshold:tau=0.5"}
    whole = unmask.decode(model, prompts, **settings)
    decoding = unmask.steps(model, prompts, **settings)
    views = []
    for view in decoding:
        assert not torch.is_inference_mode_enabled()
        views.append(view)
        if len(views) == 2:
            decoding.retire([1])
    assert torch.equal(decoding.result.tokens[[0, 2]], whole.tokens[[0, 2]])
    assert torch.equal(decoding.result.nfe[[0, 2]], whole.nfe[[0, 2]])
    assert decoding.result.nfe[1] < whole.nfe[1]  # finished at the step after the retirement
    assert not (decoding.result.tokens == model.mask_token_id).any()
    assert torch.equal(unmask.steps(model, prompts, **settings).run().tokens, whole.tokens)
