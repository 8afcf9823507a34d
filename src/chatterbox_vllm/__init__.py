"""OpenAI-compatible speech server for Resemble AI's Chatterbox models, with T3 served by vLLM."""

__version__ = "0.1.0"
