"""Check a vLLM source tree for every interface chatterbox-vllm's T3 engine relies on, without importing it.

For releases that cannot run on the machines at hand (e.g. one built for a newer torch), unpack the wheel and
point this at it:
    pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 vllm==X -d w
    unzip -q w/vllm-X-*.whl 'vllm/*' -d src-X && python tools/check_vllm_api.py src-X/vllm
Exit status 0 when every check passes; each failure is printed.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path


def _function_args(tree: ast.AST, class_name: str, method: str) -> list[str] | None:
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name == method:
                    return [a.arg for a in item.args.args + item.args.kwonlyargs]
    return None


def checks(root: Path) -> list[tuple[str, bool]]:
    def text(rel: str) -> str:
        path = root / rel
        return path.read_text(encoding="utf-8") if path.is_file() else ""

    interfaces = text("model_executor/models/interfaces.py")
    runner = text("v1/worker/gpu_model_runner.py")
    logits_iface = text("v1/sample/logits_processor/interface.py")
    logits_init = text("v1/sample/logits_processor/__init__.py")
    sampler = text("v1/sample/sampler.py")
    attention = text("model_executor/layers/attention/attention.py")
    attention_init = text("model_executor/layers/attention/__init__.py")
    args = text("engine/arg_utils.py")
    envs = text("envs.py")
    output_processor = text("v1/engine/output_processor.py")
    registry = text("model_executor/models/registry.py")

    mrope_args = _function_args(ast.parse(interfaces or "pass"), "SupportsMRoPE", "get_mrope_input_positions")
    lp_init = _function_args(ast.parse(logits_iface or "pass"), "LogitsProcessor", "__init__")
    attn_init = _function_args(ast.parse(attention or "pass"), "Attention", "__init__") or []
    return [
        ("SupportsMRoPE.get_mrope_input_positions(self, input_tokens, mm_features)",
         mrope_args == ["self", "input_tokens", "mm_features"]),
        ("M-RoPE positions are initialised for prompt_embeds requests",
         "def _init_mrope_positions" in runner and "prompt_embeds.shape[0]" in runner),
        ("V1 LogitsProcessor(vllm_config, device, is_pin_memory)",
         lp_init == ["self", "vllm_config", "device", "is_pin_memory"]),
        ("LogitsProcessor has apply / is_argmax_invariant / update_state / validate_params",
         all(f"def {m}(" in logits_iface for m in ("apply", "is_argmax_invariant", "update_state", "validate_params"))),
        ("AddedRequest = (index, params, prompt_tok_ids, output_tok_ids)",
         re.search(r"AddedRequest = tuple\[int, SamplingParams, list\[int\] \| None, list\[int\]\]", logits_iface)
         is not None),
        ("BatchUpdate, LogitsProcessor, MoveDirectionality exported",
         all(name in logits_init for name in ("BatchUpdate", "LogitsProcessor", "MoveDirectionality"))),
        ("custom non-argmax-invariant processors run before penalties and sampling",
         sampler.find("non_argmax_invariant") != -1
         and sampler.find("non_argmax_invariant") < sampler.find("self.apply_penalties(")),
        ("Attention(num_heads, head_size, scale, num_kv_heads, ..., cache_config, ..., prefix)",
         attn_init[:5] == ["self", "num_heads", "head_size", "scale", "num_kv_heads"]
         and "cache_config" in attn_init and "prefix" in attn_init),
        ("Attention importable from vllm.model_executor.layers.attention", "import Attention" in attention_init),
        ("EngineArgs fields", all(re.search(rf"^    {f}:", args, re.M) for f in (
            "skip_tokenizer_init", "enable_prompt_embeds", "enable_prefix_caching", "logits_processors",
            "served_model_name", "disable_log_stats", "enforce_eager", "max_num_seqs", "gpu_memory_utilization",
            "use_tqdm_on_load", "data_parallel_size"))),
        ("VLLM_USE_V2_MODEL_RUNNER can select the V1 model runner", "VLLM_USE_V2_MODEL_RUNNER" in envs),
        ("output_processor.get_num_unfinished_requests", "def get_num_unfinished_requests" in output_processor),
        ("ModelRegistry.register_model(arch, 'module:Class')", "def register_model(" in registry),
    ]


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    root = Path(sys.argv[1])
    failed = 0
    for name, ok in checks(root):
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
        failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
