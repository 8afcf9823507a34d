"""Registers T3 with vLLM, in this process and (through the `vllm.general_plugins` entry point) in every engine
process vLLM spawns."""

from __future__ import annotations

ARCHITECTURE = "ChatterboxT3ForVLLM"
MODEL_CLASS = "chatterbox_vllm.engine.vllm_t3.model:ChatterboxT3ForVLLM"
LOGITS_PROCESSOR = "chatterbox_vllm.engine.vllm_t3.logits:CFGLogitsProcessor"

# Keys of `SamplingParams.extra_args` that CFGLogitsProcessor reads.
CFG_WEIGHT = "chatterbox_cfg_weight"
REPETITION_PENALTY = "chatterbox_repetition_penalty"


def register() -> None:
    """Idempotent: vLLM calls general plugins once per process, we may call it again before building an engine."""
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        # Lazy (a "module:Class" string): vLLM imports the model only in the process that runs it.
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
