"""`PlaybackLead`: how far a stream's audio runs ahead of real-time playback, which decides whether a later partial
vocode is worth its S3Gen time (a clock under the test's control: no timing)."""

from __future__ import annotations

from chatterbox_vllm.server.playback_lead import PlaybackLead


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_nothing_sent_is_no_lead() -> None:
    clock = Clock()
    lead = PlaybackLead(clock)
    clock.now += 5
    assert lead.ahead_s() == 0.0
    lead.sent(0.0)  # an empty emission starts nothing
    clock.now += 5
    assert lead.ahead_s() == 0.0


def test_the_lead_grows_with_audio_sent_and_shrinks_as_it_plays() -> None:
    clock = Clock()
    lead = PlaybackLead(clock)
    lead.sent(0.4)  # the first partial: 10 tokens
    assert lead.ahead_s() == 0.4
    clock.now += 0.1
    lead.sent(0.8)
    assert abs(lead.ahead_s() - 1.1) < 1e-9
    clock.now += 2.0
    assert abs(lead.ahead_s() + 0.9) < 1e-9  # the listener ran dry 0.9 s ago
