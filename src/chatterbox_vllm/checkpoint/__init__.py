"""Checkpoint files: their layout, strict loading, the hub, and random-weight checkpoints for tests."""
