"""A flow that yields between its Euler steps (`steps_yield_to`, how a long-form job's S3Gen batch lets requests in):
the same mel as the whole loop, the hook run between every two steps on the solving thread only."""

from __future__ import annotations

import threading

import torch

from chatterbox_vllm.checkpoint.config import load_model_config
from chatterbox_vllm.checkpoint.hub import resolve_model
from chatterbox_vllm.models.s3gen import load_s3gen
from chatterbox_vllm.models.s3gen.flow_matching import steps_yield_to
from flow_utils import flow_inputs


def test_a_yielding_flow_computes_the_same_mel_and_yields_between_steps(english_tiny_checkpoint) -> None:
    directory, layout = resolve_model(str(english_tiny_checkpoint))
    s3gen = load_s3gen(directory / layout.s3gen, load_model_config(directory, layout).s3gen).eval()
    cfm = s3gen.flow.decoder
    noise, f = flow_inputs(s3gen, directory, 23)
    steps = 4
    calls: list[str] = []
    other_thread: list[torch.Tensor] = []

    def hook() -> None:
        calls.append(threading.current_thread().name)
        if len(calls) == 1:  # work run inside the hook solves whole (the worker runs requests' flows there)
            with steps_yield_to(None):
                other_thread.append(cfm(f.mu, f.mask, f.spks, f.cond, n_timesteps=steps, noise=noise))

    with torch.inference_mode():
        whole = cfm(f.mu, f.mask, f.spks, f.cond, n_timesteps=steps, noise=noise)
        with steps_yield_to(hook):
            yielding = cfm(f.mu, f.mask, f.spks, f.cond, n_timesteps=steps, noise=noise)
            # another thread does not see this thread's hook
            seen: list[torch.Tensor] = []
            thread = threading.Thread(target=lambda: seen.append(cfm(f.mu, f.mask, f.spks, f.cond, n_timesteps=steps,
                                                                     noise=noise)))  # fmt: skip
            thread.start()
            thread.join()
    assert calls == [threading.current_thread().name] * (steps - 1)  # between steps only: not before the first
    assert torch.equal(yielding, whole)  # the same operations in the same order: the same bits on this host
    assert torch.equal(other_thread[0], whole) and torch.equal(seen[0], whole)
