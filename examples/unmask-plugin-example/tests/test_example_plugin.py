"""The example plug-in, seen from outside: registered through its entry point, contract-checked, decoding."""

import unmask
from unmask.contrib.models.reference import load_reference_model
from unmask.contrib.tasks import samples, score
from unmask.contrib.models.transformers import decode_text
from unmask.testing import check_stop_criterion, check_unmask_policy


def test_entry_point_registers_every_component():
    registry = unmask.registry()
    assert registry.get("policies", "margin").provider == "unmask-plugin-example"
    assert registry.get("policies", "all_in").provider == "unmask-plugin-example"
    assert registry.get("stops", "confident_finish").provider == "unmask-plugin-example"


def test_components_pass_the_contract_checks():
    check_unmask_policy("margin")
    check_unmask_policy("margin:gap=0.3 + threshold:tau=0.9", max_examples=15)
    check_unmask_policy("all_in")
    check_unmask_policy("all_in:tau=0.5", max_examples=15)
    check_stop_criterion("confident_finish")
    check_stop_criterion("confident_finish:tau=0.5 + eotp", max_examples=15)


def test_decodes_the_bundled_model_with_fewer_forwards():
    model, tokenizer = load_reference_model()
    items = samples("chain_sum", 8, seed=0)
    prompts = [s.prompt for s in items]
    vanilla, base = decode_text(model, tokenizer, prompts, gen_length=64, block_length=32)
    answers, result = decode_text(model, tokenizer, prompts, gen_length=64, block_length=32,
                                  policy="margin:gap=0.9", stop="confident_finish")
    assert result.components["policy"]["provider"] == "unmask-plugin-example"
    assert result.nfe.float().mean() < base.nfe.float().mean() / 4
    assert sum(map(score, items, answers)) >= sum(map(score, items, vanilla)) - 1


def test_a_canvas_reach_policy_commits_past_its_block():
    model, tokenizer = load_reference_model()
    prompts = [s.prompt for s in samples("copy", 4, seed=0)]
    _, base = decode_text(model, tokenizer, prompts, gen_length=64, block_length=16)
    answers, result = decode_text(model, tokenizer, prompts, gen_length=64, block_length=16, policy="all_in:tau=0.5")
    assert result.nfe.float().mean() < base.nfe.float().mean() / 4
    # A row filled in its first block: every later column committed at that block's last step.
    first = result.commit_step[:, 16:].min(1).values
    assert (first < 16).any(), result.commit_step
