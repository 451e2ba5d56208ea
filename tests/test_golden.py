"""The engine decodes exactly as recorded in tests/golden/engine.json (scripts/record_golden.py): tokens, forwards
and commit steps of every built-in policy x stop x cache x constraint on both bundled models. The tests
replay the batches of one configuration in five (every policy, stop, cache and constraint among them) and
the one-prompt-at-a-time decodes of one in 37, within the suite's time; ``python scripts/record_golden.py
--check tests/golden/engine.json`` replays all 400 both ways (about 15 minutes), as a change to the engine
should before it lands."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("record_golden", ROOT / "scripts" / "record_golden.py")
golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(golden)
RECORDED = json.loads((ROOT / "tests" / "golden" / "engine.json").read_text())["configurations"]
CONFIGURATIONS = list(golden.configurations())
REPLAYED = CONFIGURATIONS[::5]  # 5 is prime to the 4 constraints and 2 stops: each of them appears


@pytest.fixture(scope="module")
def decoder():
    return golden.Decoder()


def test_every_configuration_is_recorded():
    missing = {golden.key(*c) for c in CONFIGURATIONS} - set(RECORDED)
    assert not missing, f"record them: python scripts/record_golden.py --out tests/golden/engine.json ({missing})"


@pytest.mark.parametrize("model", list(golden.MODELS))
def test_every_batch_decodes_as_recorded(decoder, model):
    changed = {}
    for configuration in REPLAYED:
        if configuration[0] == model:
            outcome, forwards = decoder.outcome(configuration, list(range(24)))
            expected = RECORDED[golden.key(*configuration)]
            if (outcome, forwards) != (expected["batched"], expected["forwards"]):
                changed[golden.key(*configuration)] = (expected["batched"], outcome)
    assert not changed


def test_a_share_decodes_one_prompt_at_a_time_as_recorded(decoder):
    changed = [golden.key(*c) for c in CONFIGURATIONS[3::37] if decoder.alone(c) != RECORDED[golden.key(*c)]["alone"]]
    assert not changed
