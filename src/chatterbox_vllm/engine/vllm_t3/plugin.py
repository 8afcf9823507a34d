"""Registers T3 with vLLM, in this process and (through the `vllm.general_plugins` entry point) in every engine
process vLLM spawns."""

from __future__ import annotations

ARCHITECTURE = "ChatterboxT3ForVLLM"
MODEL_CLASS = "chatterbox_vllm.engine.vllm_t3.model:ChatterboxT3ForVLLM"
LOGITS_PROCESSOR = "chatterbox_vllm.engine.vllm_t3.logits:CFGLogitsProcessor"
# GPT-2 T3 (Turbo, Nano)
GPT2_ARCHITECTURE = "ChatterboxGPT2T3ForVLLM"
GPT2_MODEL_CLASS = "chatterbox_vllm.engine.vllm_t3.gpt2_model:ChatterboxGPT2T3ForVLLM"
TURBO_LOGITS_PROCESSOR = "chatterbox_vllm.engine.vllm_t3.logits:TurboLogitsProcessor"
# By T3 backbone kind (`T3Config.backbone`): the vLLM architecture that serves it and its logits processor.
BACKBONE_ARCHITECTURES = {"llama": ARCHITECTURE, "gpt2": GPT2_ARCHITECTURE}
BACKBONE_LOGITS_PROCESSORS = {"llama": LOGITS_PROCESSOR, "gpt2": TURBO_LOGITS_PROCESSOR}

# The model's HF config entry (set through vLLM's hf_overrides from `VLLMOptions.compile`, i.e. the server's
# CHATTERBOX_T3_COMPILE) that says whether T3 may be compiled: vLLM's engine process gets it with the config.
T3_COMPILE = "chatterbox_t3_compile"

# Keys of `SamplingParams.extra_args` that CFGLogitsProcessor reads.
CFG_WEIGHT = "chatterbox_cfg_weight"
REPETITION_PENALTY = "chatterbox_repetition_penalty"
# ... and that TurboLogitsProcessor reads (with REPETITION_PENALTY): it applies temperature, top-k and top-p itself.
TEMPERATURE = "chatterbox_temperature"
TOP_K = "chatterbox_top_k"
TOP_P = "chatterbox_top_p"


def register() -> None:
    """Idempotent: vLLM calls general plugins once per process, we may call it again before building an engine."""
    from vllm import ModelRegistry

    supported = ModelRegistry.get_supported_archs()
    for architecture, model_class in ((ARCHITECTURE, MODEL_CLASS), (GPT2_ARCHITECTURE, GPT2_MODEL_CLASS)):
        if architecture not in supported:
            # Lazy (a "module:Class" string): vLLM imports the model only in the process that runs it.
            ModelRegistry.register_model(architecture, model_class)
