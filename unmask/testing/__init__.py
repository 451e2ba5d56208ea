"""The public test kit: a fake denoiser, hypothesis strategies and contract checks for components."""

from unmask.testing.checks import (
    build_component, check_cache_manager, check_constraint, check_stop_criterion, check_unmask_policy,
)
from unmask.testing.fake_model import FakeDenoiser, FakeTokenizer, RecordingModel
from unmask.testing.generators import after_commit, committed_views, decode_configs, step_views

__all__ = [
    "FakeDenoiser", "RecordingModel", "FakeTokenizer", "check_unmask_policy", "check_constraint", "check_stop_criterion", "check_cache_manager", "build_component",
    "step_views", "committed_views", "after_commit", "decode_configs",
]
