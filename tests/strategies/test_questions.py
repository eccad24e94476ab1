"""Questions made by masking a sentence's answer spans (clslm/strategies/questions.py)."""

from clslm.strategies.questions import answer_spans, masked_question, questions_for


def test_a_year_becomes_what_year():
    assert questions_for("The tower was completed in 1793.") == ["The tower was completed in what year?"]


def test_quantities_names_and_places_get_their_wh_words():
    questions = questions_for("Its keeper, Ismay Threlkeld, climbed 214 steps at Hollin Edge every night.")
    assert "Its keeper, who, climbed 214 steps at Hollin Edge every night?" in questions
    assert any("how many steps" in q and "214" not in q for q in questions)
    assert any("where" in q and "Hollin" not in q for q in questions)


def test_a_question_never_contains_its_answer():
    sentence = "The bridge, designed by Haldane Ouro, will be 86 metres long and open in the spring of 2027."
    for span in answer_spans(sentence):
        answer = sentence[span.start : span.end]
        assert answer not in masked_question(sentence, span)


def test_the_documents_subject_is_not_an_answer():
    sentence = "The Kessenbrock Light was commissioned by the Harbour Board of Caddenmouth."
    wh = [sentence[s.start : s.end] for s in answer_spans(sentence, topic="the Kessenbrock Light")]
    assert wh == ["the Harbour Board of Caddenmouth"]


def test_a_sentence_without_facts_gets_no_question():
    assert questions_for("A small brass plaque beside the entrance records her name.") == []
