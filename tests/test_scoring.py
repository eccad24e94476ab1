"""Answer scoring: SQuAD-style normalisation, number words, answer-contains, token F1."""

from __future__ import annotations

import pytest

from clslm.scoring import contains_answer, normalize, token_f1


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  An  apple, a pear; the END.  ", "apple pear end"),
        ("“Quoted” — text…", "quoted text"),
        ("Fosk’s lamp", "fosk s lamp"),
        ("9,650 tonnes", "9650 tonnes"),
        ("18:52", "18 52"),
    ],
)
def test_normalize_strips_case_punctuation_and_articles(text, expected):
    assert normalize(text) == expected


@pytest.mark.parametrize(
    "words, digits",
    [
        ("twenty-seven", "27"),
        ("Twenty seven", "27"),
        ("eleven", "11"),
        ("ninety days", "90 days"),
        ("one hundred and twelve", "112"),
        ("a hundred", "100"),
        ("two thousand three hundred and five", "2305"),
        ("one million two hundred thousand", "1200000"),
        ("zero", "0"),
    ],
)
def test_number_words_become_digits(words, digits):
    assert normalize(words) == digits


def test_separate_numbers_stay_separate():
    assert normalize("eleven votes to four") == "11 votes to 4"
    assert normalize("three and four") == "3 and 4"
    assert normalize("one two") == "1 2"
    assert normalize("nineteen ninety") == "19 90"
    assert normalize("hundred and fish") == "100 and fish"


def test_contains_answer():
    assert contains_answer("It is the Eiffel Tower.", ["eiffel tower"])
    assert contains_answer("eiffel tower", ["The Eiffel Tower!"])
    assert contains_answer("There were twenty-seven of them.", ["27"])
    assert contains_answer("27 ships", ["twenty-seven"])
    assert contains_answer("It weighed 9650 tonnes", ["9,650 tonnes"])
    assert contains_answer("no", ["x", "No"])
    assert not contains_answer("It was finished in 17930.", ["1793"])  # whole words only
    assert not contains_answer("Towers everywhere", ["tower"])
    assert not contains_answer("anything", [])
    assert not contains_answer("the", ["The"])  # an answer that normalises to nothing never matches


def test_token_f1():
    assert token_f1("The Eiffel Tower!", ["eiffel tower"]) == 1.0
    assert token_f1("Paris", ["London"]) == 0.0
    assert token_f1("the Eiffel tower in Paris", ["Eiffel Tower"]) == pytest.approx(2 * (2 / 4) * 1 / (2 / 4 + 1))
    assert token_f1("twenty seven ships", ["27 ships"]) == 1.0
    assert token_f1("x y", ["z", "x y"]) == 1.0  # best over the accepted answers
    assert token_f1("", ["a"]) == 1.0  # both normalise to nothing
    assert token_f1("anything", []) == 0.0
