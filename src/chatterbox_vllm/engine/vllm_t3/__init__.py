"""T3 inside vLLM: the model class, the CFG logits processor, the model directory vLLM reads, and registration.

Importing this package does not import vLLM; its modules do.
"""
