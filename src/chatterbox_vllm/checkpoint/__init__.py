"""Checkpoint files: their layout, strict loading, the hub. (Random-weight checkpoints for tests and demos are
`chatterbox_vllm.random_checkpoint`, outside the load path.)"""
