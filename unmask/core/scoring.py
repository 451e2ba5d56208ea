"""Scoring a forward: predicted tokens and their confidence, placed on the canvas, with the checks a
model's logits must pass. Shared by the engine's own forwards and the candidate canvases it scores."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["SCORE_COLUMNS", "predict", "on_canvas", "check_logits"]

SCORE_COLUMNS = 32  # columns scored together in float64: bounds the copy at (B, 32, V) whatever the canvas


def column_chunks(width: int) -> list[slice]:
    """``[0, width)`` in slices of ``SCORE_COLUMNS`` columns."""
    return [slice(start, start + SCORE_COLUMNS) for start in range(0, width, SCORE_COLUMNS)]


def predict(
    logits: torch.Tensor, temperature: float, generator: torch.Generator, mask_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S, V) logits -> predicted tokens and their softmax probability, both (B, S)."""
    if temperature > 0:
        # LLaDA's Gumbel-max in float64, written in log space: argmax(l - T * log(-log(u))). The uniforms
        # are drawn in one call (the reference samplers' stream); the rest is done in place, a few columns
        # at a time, so that they stay the only full-span float64 tensor.
        noisy = torch.rand(logits.shape, dtype=torch.float64, device=logits.device, generator=generator)
        for columns in column_chunks(logits.shape[1]):
            noisy[:, columns].log_().neg_().log_().mul_(-temperature).add_(logits[:, columns])
    else:
        noisy = logits
    x0 = noisy.argmax(-1)
    # Committing [MASK] would leave the position masked; take the runner-up there (rare).
    predicted_mask = x0 == mask_id
    if predicted_mask.any():
        x0[predicted_mask] = noisy[predicted_mask].topk(2, dim=-1).indices[:, 1]
    del noisy
    # float64 like the reference samplers, so near-ties between confidences break the same way; a few
    # columns at a time, so the float64 copy is (B, SCORE_COLUMNS, V), not the whole span's.
    confidence = torch.empty(x0.shape, dtype=torch.float64, device=logits.device)
    for columns in column_chunks(logits.shape[1]):
        # softmax, not exp(l - logsumexp): near 1 the subtraction rounds to 0 and a sure prediction
        # ties at exactly 1.0 with others that the reference samplers still rank apart.
        probability = torch.softmax(logits[:, columns].double(), dim=-1)
        confidence[:, columns] = probability.gather(-1, x0[:, columns, None]).squeeze(-1)
        del probability
    return x0, confidence  # softmax probability of x0


def check_logits(logits: Any, expected: tuple[int, int], largest_id: int, step: int) -> None:
    """A model must return one finite score per fed column and vocabulary entry, or decoding cannot go on."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or tuple(logits.shape[:2]) != expected:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"step {step}: the model returned logits {got}; expected (batch, fed columns, vocab) "
                         f"with batch and fed columns {expected}")
    if logits.shape[-1] <= largest_id:
        raise ValueError(f"step {step}: the model returned {logits.shape[-1]} vocabulary entries, fewer than the "
                         f"mask and EOS ids need ({largest_id + 1})")
    # A sum is NaN or infinite when any term is, and costs one read of the logits (an elementwise isfinite
    # allocates a mask as large as them: at LLaDA's vocabulary it took as long as a small model's forward).
    # A sum that overflows from finite terms alone is checked again term by term.
    if not torch.isfinite(logits.sum()) and not all(
            torch.isfinite(logits[:, columns]).all() for columns in column_chunks(logits.shape[1])):
        raise ValueError(f"step {step}: the model returned NaN or infinite logits")


def on_canvas(
    x: torch.Tensor, masked: torch.Tensor, start: int, span_x0: torch.Tensor, span_confidence: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Span predictions placed on the (B, L) canvas: x0 = x and confidence = -inf where not predicted."""
    predicted = torch.zeros_like(masked)
    predicted[:, start:start + span_x0.shape[1]] = True
    predicted &= masked
    x0, confidence = x.clone(), torch.full(x.shape, float("-inf"), dtype=span_confidence.dtype, device=x.device)
    x0[:, start:start + span_x0.shape[1]] = span_x0
    confidence[:, start:start + span_x0.shape[1]] = span_confidence
    return torch.where(predicted, x0, x), confidence.masked_fill(~predicted, float("-inf"))
