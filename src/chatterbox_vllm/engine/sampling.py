"""T3's per-step logits processing, in the reference's order (chatterbox-tts `T3.inference`):

CFG -> repetition penalty over [start-of-speech] + generated -> / temperature -> min-p -> top-p -> softmax.

Turbo and Nano (`T3.inference_turbo`) run a different chain: / temperature -> top-k -> top-p -> repetition
penalty -> softmax, the penalty over [start-of-speech] at the first step and over the generated tokens alone after.

Each step reproduces the Hugging Face logits processors the reference instantiates (RepetitionPenalty, MinP, TopP)
operation for operation, so the probabilities match to float32 rounding. The functions take [rows, vocab] logits.
"""

from __future__ import annotations

import torch

from .base import SamplingParams


def apply_cfg(cond: torch.Tensor, uncond: torch.Tensor, cfg_weight: float) -> torch.Tensor:
    """cond + w * (cond - uncond), with w as a tensor of the logits' dtype (as the reference computes it)."""
    w = torch.as_tensor(cfg_weight, device=cond.device, dtype=cond.dtype)
    return cond + w * (cond - uncond)


def apply_repetition_penalty(logits: torch.Tensor, history: torch.Tensor, penalty: float) -> torch.Tensor:
    """For every id in `history` ([n] long, repeats allowed): negative logits *= penalty, others /= penalty."""
    if penalty == 1.0 or history.numel() == 0:
        return logits
    ids = torch.unique(history).to(logits.device)
    picked = logits[:, ids]
    penalised = torch.where(picked < 0, picked * penalty, picked / penalty)
    out = logits.clone()
    out[:, ids] = penalised
    return out


def apply_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens whose probability is below min_p * (highest probability); the most likely token always stays."""
    if min_p <= 0:
        return logits
    probs = torch.softmax(logits, dim=-1)
    remove = probs < min_p * probs.amax(dim=-1, keepdim=True)
    remove.scatter_(-1, probs.argmax(dim=-1, keepdim=True), False)
    return logits.masked_fill(remove, float("-inf"))


def apply_top_p(logits: torch.Tensor, top_p: float | torch.Tensor) -> torch.Tensor:
    """Nucleus filtering: drop the least likely tokens whose cumulative probability is <= 1 - top_p.

    top_p == 1 keeps every token of non-zero probability, which leaves the softmax unchanged, so it is skipped.
    A [rows, 1] tensor gives each row its own top_p (vLLM's logits processor, many requests in one batch).
    """
    if not isinstance(top_p, torch.Tensor) and top_p >= 1.0:
        return logits
    ascending, order = torch.sort(logits, descending=False)
    cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
    threshold = 1 - (top_p.to(cumulative.dtype) if isinstance(top_p, torch.Tensor) else top_p)
    remove_sorted = cumulative <= threshold
    remove_sorted[..., -1:] = False
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def apply_top_k(logits: torch.Tensor, top_k: int | torch.Tensor) -> torch.Tensor:
    """Keep the `top_k` highest logits (ties at the k-th value kept too, as HF's TopKLogitsWarper does); 0 = off.
    A [rows] tensor gives each row its own k (vLLM's logits processor)."""
    if not isinstance(top_k, torch.Tensor):
        if top_k <= 0 or top_k >= logits.shape[-1]:
            return logits
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, float("-inf"))
    k = top_k.to(torch.long).clamp(0, logits.shape[-1])
    descending = logits.sort(dim=-1, descending=True).values
    kth = descending.gather(-1, (k - 1).clamp(min=0).unsqueeze(-1))
    kth = torch.where((k > 0).unsqueeze(-1), kth, torch.full_like(kth, float("-inf")))
    return logits.masked_fill(logits < kth, float("-inf"))


def turbo_penalty_history(start_token: int, generated: torch.Tensor) -> torch.Tensor:
    """Whose logits Turbo's repetition penalty touches: the start-of-speech token until a token exists, then only
    the generated tokens (the reference passes `speech_start_token`, then `cat(generated)`)."""
    if generated.numel() == 0:
        return torch.tensor([start_token], dtype=torch.long, device=generated.device)
    return generated


def turbo_processed_logits(logits: torch.Tensor, history: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Turbo's chain on [rows, vocab] logits, before the softmax. Temperature 0 (greedy) skips the temperature."""
    if params.temperature not in (0.0, 1.0):
        logits = logits / params.temperature
    logits = apply_top_k(logits, int(params.top_k))
    logits = apply_top_p(logits, float(params.top_p))
    return apply_repetition_penalty(logits, history, float(params.repetition_penalty))


def turbo_sampling_probs(logits: torch.Tensor, history: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Turbo's sampling distribution over [rows, vocab] logits (`history` from `turbo_penalty_history`)."""
    return torch.softmax(turbo_processed_logits(logits, history, params), dim=-1)


def greedy_token(logits: torch.Tensor, history: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """CFG-combined logits [rows, vocab] -> the most likely token after the repetition penalty, [rows, 1].

    Temperature, min-p and top-p never change the argmax, so they are skipped.
    """
    logits = apply_repetition_penalty(logits, history, float(params.repetition_penalty))
    return logits.argmax(dim=-1, keepdim=True)


def sampling_probs(logits: torch.Tensor, history: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """CFG-combined logits [rows, vocab] -> sampling distribution [rows, vocab]."""
    logits = apply_repetition_penalty(logits, history, float(params.repetition_penalty))
    if params.temperature != 1.0:
        logits = logits / params.temperature
    logits = apply_min_p(logits, float(params.min_p))
    logits = apply_top_p(logits, float(params.top_p))
    return torch.softmax(logits, dim=-1)


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator:
    """A private RNG for one request: seeded when `seed` is given, otherwise seeded from OS entropy.

    `torch.Generator().manual_seed(s)` yields the same stream as the global RNG after `torch.manual_seed(s)`, so a
    seeded CPU request reproduces the reference's draws without touching global state.
    """
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
