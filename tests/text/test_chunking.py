"""Splitting long input for synthesis: sentence boundaries, merging, cuts of over-long sentences, nothing lost."""

from __future__ import annotations

import random

import pytest

from chatterbox_vllm.text.chunking import split_for_synthesis


def _check(pieces: list[str], text: str, max_chars: int, joiner: str = " ") -> None:
    """The invariants every split keeps: bounded, non-empty, trimmed pieces that give the normalised text back."""
    assert all(0 < len(p) <= max_chars for p in pieces), [len(p) for p in pieces]
    assert all(p == p.strip() for p in pieces)
    assert joiner.join(pieces) == " ".join(text.split())


def test_empty_and_blank_input_give_no_pieces() -> None:
    assert split_for_synthesis("") == []
    assert split_for_synthesis(" \n\t\u3000 ") == []


def test_short_text_is_one_normalised_piece() -> None:
    assert split_for_synthesis("  Hello,\n\n  world!\tHow are   you? ") == ["Hello, world! How are you?"]


def test_max_chars_must_be_positive() -> None:
    with pytest.raises(ValueError):
        split_for_synthesis("text", 0)


def test_splits_at_sentence_ends_keeping_the_punctuation() -> None:
    text = "One two three. Four five six! Seven eight nine? Ten eleven… Twelve."
    assert split_for_synthesis(text, 17) == ["One two three.", "Four five six!", "Seven eight nine?", "Ten eleven…",
                                             "Twelve."]


def test_short_sentences_are_merged_greedily() -> None:
    text = "Hi. Yes. No. Maybe so. Fine then. Goodbye now."
    pieces = split_for_synthesis(text, 20)
    assert pieces == ["Hi. Yes. No.", "Maybe so. Fine then.", "Goodbye now."]
    _check(pieces, text, 20)
    assert split_for_synthesis(text, 300) == [text]


def test_closing_quotes_and_punctuation_runs_stay_with_their_sentence() -> None:
    text = 'He said "Stop right there." Then he left?! (Quietly.) The end...'
    pieces = split_for_synthesis(text, 28)
    assert pieces == ['He said "Stop right there."', "Then he left?! (Quietly.)", "The end..."]


@pytest.mark.parametrize(
    "text",
    [
        "Mr. Smith met Mrs. Jones and Dr. Brown on St. Mark's Square yesterday afternoon.",
        "Bring fruit, e.g. apples or pears, and tools, i.e. hammers, saws, nails etc. for the work.",
        "It was the champion vs. the challenger in a rematch everybody had waited for.",
        "J. R. R. Tolkien moved to the U.S. Army base only in his imagination of course.",
    ],
)
def test_abbreviations_do_not_end_sentences(text: str) -> None:
    assert split_for_synthesis(text, 300) == [text]
    # even when the sentence has to be cut, it is not cut after an abbreviation's period
    pieces = split_for_synthesis(text + " Second sentence here.", len(text))
    assert pieces == [text, "Second sentence here."]


def test_decimals_and_dotted_words_are_not_sentence_ends() -> None:
    text = "Pi is about 3.14159 and e is 2.71828 here. Version 1.2.3 ships in file.txt today."
    pieces = split_for_synthesis(text, 45)
    assert pieces == ["Pi is about 3.14159 and e is 2.71828 here.", "Version 1.2.3 ships in file.txt today."]


def test_long_sentence_is_cut_at_the_last_clause_mark() -> None:
    text = ("The committee met in the morning, discussed the budget at length; agreed on the main points: "
            "then it adjourned until the following week without any further comment at all")
    pieces = split_for_synthesis(text, 100)
    assert pieces[0] == "The committee met in the morning, discussed the budget at length; agreed on the main points:"
    _check(pieces, text, 100)


def test_long_sentence_is_cut_after_a_dash() -> None:
    text = "We waited for a very long time in the cold rain — nobody came to open the door for us at all that night"
    pieces = split_for_synthesis(text, 60)
    assert pieces[0] == "We waited for a very long time in the cold rain —"
    _check(pieces, text, 60)


def test_thousands_separators_and_hyphens_are_not_clause_marks() -> None:
    text = "The well-known city had 1,000,000 inhabitants and many more visitors every single summer season"
    pieces = split_for_synthesis(text, 40)
    assert all("1,000,000" in p or "1," not in p for p in pieces)
    assert any("well-known" in p for p in pieces)
    _check(pieces, text, 40)


def test_long_sentence_without_clause_marks_is_cut_at_the_last_space() -> None:
    text = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau"
    pieces = split_for_synthesis(text, 30)
    assert pieces == ["alpha beta gamma delta epsilon", "zeta eta theta iota kappa", "lambda mu nu xi omicron pi rho",
                      "sigma tau"]
    _check(pieces, text, 30)


def test_clause_mark_too_near_the_start_loses_to_a_space() -> None:
    text = "So, " + " ".join(["word"] * 40)
    pieces = split_for_synthesis(text, 60)
    assert pieces[0] != "So," and len(pieces[0]) > 50
    _check(pieces, text, 60)


def test_a_single_huge_word_is_cut_hard() -> None:
    word = "".join(random.Random(0).choice("abcdefghij") for _ in range(1000))
    pieces = split_for_synthesis(word, 300)
    assert [len(p) for p in pieces] == [300, 300, 300, 100]
    assert "".join(pieces) == word
    pieces = split_for_synthesis(f"Start. {word} end.", 300)
    assert pieces[0] == "Start." and "".join(pieces[1:]) == f"{word} end."


def test_chinese_splits_at_full_width_enders_without_spaces() -> None:
    text = "今天天气很好。我们去公园散步吧！你觉得怎么样？好的；那我们走吧。"
    assert split_for_synthesis(text, 300) == [text]
    pieces = split_for_synthesis(text, 10)
    assert pieces == ["今天天气很好。", "我们去公园散步吧！", "你觉得怎么样？好的；", "那我们走吧。"]
    assert "".join(pieces) == text


def test_japanese_long_sentence_is_cut_at_commas_then_hard() -> None:
    text = "私は昨日、友達と一緒に東京の新しい美術館へ行って、たくさんの素晴らしい絵を見ました。"
    pieces = split_for_synthesis(text, 20)
    assert pieces == ["私は昨日、", "友達と一緒に東京の新しい美術館へ行って、", "たくさんの素晴らしい絵を見ました。"]
    assert "".join(pieces) == text
    no_punctuation = "あ" * 45
    assert [len(p) for p in split_for_synthesis(no_punctuation, 20)] == [20, 20, 5]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("यह पहला वाक्य है। यह दूसरा वाक्य है।", ["यह पहला वाक्य है।", "यह दूसरा वाक्य है।"]),
        ("هل أنت بخير؟ نعم أنا بخير.", ["هل أنت بخير؟", "نعم أنا بخير."]),
        ("یہ پہلا جملہ ہے۔ یہ دوسرا ہے۔", ["یہ پہلا جملہ ہے۔", "یہ دوسرا ہے۔"]),
    ],
)
def test_other_script_enders(text: str, expected: list[str]) -> None:
    assert split_for_synthesis(text, 20) == expected


def test_five_thousand_character_paragraph_loses_nothing() -> None:
    rng = random.Random(1)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "Mr.", "3.14", "e.g.", "well-known"]
    sentences = []
    while sum(len(s) + 1 for s in sentences) < 5000:
        n = rng.randint(3, 60)
        body = " ".join(rng.choice(words) for _ in range(n))
        if rng.random() < 0.3:
            body = body.replace(" ", ", ", 1)
        sentences.append(body.capitalize() + rng.choice([".", "!", "?", "…"]))
    text = "  \n".join(sentences)
    assert len(text) >= 5000
    for max_chars in (300, 120, 40):
        pieces = split_for_synthesis(text, max_chars)
        _check(pieces, text, max_chars)
        assert len(pieces) < len(text) / (max_chars / 3)  # merged: pieces are not tiny on average
