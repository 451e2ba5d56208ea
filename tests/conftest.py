import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests build or ship every model; nothing is downloaded

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from unmask.testing import FakeDenoiser  # noqa: E402

# CI runs derandomized so a failure reproduces; HYPOTHESIS_PROFILE=dev explores new examples.
settings.register_profile("ci", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def model() -> FakeDenoiser:
    return FakeDenoiser()


@pytest.fixture
def eos_model() -> FakeDenoiser:
    """Predicts EOS from column 10 on, so EoTP has something to cut."""
    return FakeDenoiser(seed=1, eos_bias=6.0, eos_from=10)


@pytest.fixture
def prompts() -> list[list[int]]:
    return [[1, 2, 3], [4], [5, 6, 7, 8, 9], [10, 11]]


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def kv_models() -> list:
    """Denoisers that take KV caches, for the cache contract: a random Llama and a Qwen2 that shifts its
    logits (Dream-style), and both block-causal over blocks of 4 (SDAR-style, Fast-dLLM v2-style)."""
    from unmask.contrib.models.tiny import tiny_denoiser

    return [tiny_denoiser("llama"), tiny_denoiser("qwen2"), tiny_denoiser("llama", block_size=4),
            tiny_denoiser("qwen2", block_size=4)]
