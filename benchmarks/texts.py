"""The texts every benchmark speaks (ours and the reference's, so both synthesize the same inputs)."""

# About 20 s of speech at Chatterbox's pace (~15 characters a second): five sentences.
PARAGRAPH = (
    "The old lighthouse stood at the edge of the cliff, its white paint peeling after decades of storms. "
    "Every evening the keeper climbed the spiral stairs to light the lamp. "
    "Ships passing in the night relied on its steady beam to find their way home. "
    "Nobody in the village could remember a single night it had gone dark. "
    "Even now, long after the keeper retired, the light still turns."
)

# One sentence, as Open WebUI sends it: time to first audio and the concurrency sweep use it.
SENTENCE = "Good morning, and welcome to the show."

# Speech tokens T3 writes for them (25 a second). Random weights rarely sample the stop token, so the benchmarks
# cap every request at these counts to give the real model's audio lengths.
PARAGRAPH_TOKENS = 500  # 20 s
SENTENCE_TOKENS = 75  # 3 s
