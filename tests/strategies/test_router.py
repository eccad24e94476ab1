"""The router (clslm/strategies/router.py): keys per learned unit, scores, the shared Router and its options.

That routing keeps unrelated questions on the base model is one row of the contract table
(tests/test_contract.py), run for every strategy with a route_threshold option.
"""

from __future__ import annotations

import dataclasses

import pytest

from clslm.errors import InputError
from clslm.strategies.config import StrategyConfig, parse_options
from clslm.strategies.router import THRESHOLD, DocumentKeys, Router, scores, threshold_option, top_option

from conftest import DOCUMENT

OTHER = "The Velmar Bridge crosses the river Oss at Brackley. It opened in 1902 and has seven stone arches."


def test_router_scores_the_matching_document_highest():
    keys = [DocumentKeys.from_text(DOCUMENT), DocumentKeys.from_text(OTHER)]
    assert scores(keys, "Which engineer built the Kessenbrock Light?")[0] > 0.3
    assert scores(keys, "When did the Velmar Bridge open?")[1] > 0.3
    assert max(scores(keys, "What is the capital of France?")) < 0.1
    restored = DocumentKeys.from_json(keys[0].to_json())
    assert restored.score(["kessenbrock", "engineer"]) == keys[0].score(["kessenbrock", "engineer"])


def test_a_question_sharing_only_common_words_with_a_document_is_not_routed():
    sentence = "The ferry from Tarrow Spit to Ulvermere, run by the Caddenmouth Harbour Board, takes forty minutes and sails every hour."
    keys = [DocumentKeys.from_text(sentence)]
    assert scores(keys, "How many minutes are there in an hour?")[0] < THRESHOLD
    assert scores(keys, "How long does the ferry from Tarrow to Ulvermere take?")[0] >= THRESHOLD


def test_keys_saved_before_word_rarity_are_reweighted_on_load():
    old = {"vocabulary": ["hour", "tarrow"], "idf": [1.5, 4.0], "sentences": [[[0, 0.35], [1, 0.94]]]}
    keys = DocumentKeys.from_json(old)
    assert keys.score(["tarrow"]) > 0.9 and keys.score(["hour"]) < 0.5
    assert DocumentKeys.from_json(keys.to_json()).sentences == keys.sentences


def test_the_router_analyses_words_as_scikit_learn_does():
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer

    from clslm.strategies import stop_words
    from clslm.strategies.router import analyze

    assert stop_words.ENGLISH_STOP_WORDS == ENGLISH_STOP_WORDS
    sklearn_analyze = TfidfVectorizer(stop_words="english").build_analyzer()
    texts = ["Who built the Kessenbrock Light?", "Ünïcode wörds, l'été, 41 metres; a b c d_e x2 ÆØÅ. Its tower is 41 m tall!", "## Heading\nThe Tarrow-Spit (1793) — done."]
    for text in texts:
        assert analyze(text) == sklearn_analyze(text)


# ---- the Router the routed strategies share ----------------------------------------------------------


@dataclasses.dataclass
class RoutedConfig(StrategyConfig):
    route_threshold: float = threshold_option("acts only on questions that match")
    route_top: int = top_option(1, 1, "at most this many units act")


def test_router_ranks_matches_and_forgets_units():
    router = Router(RoutedConfig())
    router.add(DOCUMENT)
    router.add(OTHER)
    assert router.ranked("When did the Velmar Bridge open?") == [1]
    assert router.ranked("What is the capital of France?") == [] and not router.matches("What is the capital of France?")
    assert sorted(Router(RoutedConfig(route_threshold=0)).ranked("anything")) == [] and Router(RoutedConfig(route_threshold=0)).matches("x")
    router.remove(0)
    assert len(router) == 1 and router.ranked("When did the Velmar Bridge open?") == [0]
    router.remove(range(0, 1))
    assert len(router) == 0


def test_saved_keys_keep_their_layout():
    """A list for routers by position, an object {name: keys} for named ones (jitrl-mvp): what sessions hold."""
    listed = Router(RoutedConfig())
    listed.add(DOCUMENT)
    saved = listed.to_json()
    assert isinstance(saved, list) and saved == [DocumentKeys.from_text(DOCUMENT).to_json()]
    again = Router(RoutedConfig())
    again.load(saved)
    assert again.scores("Who built the Kessenbrock Light?") == listed.scores("Who built the Kessenbrock Light?")

    named = Router(RoutedConfig(), named=True)
    named.put("a", DocumentKeys.from_text(DOCUMENT))
    named.put("b", DocumentKeys.from_text(OTHER))
    named.put("a", DocumentKeys.from_text(DOCUMENT))  # a namesake replaces the keys (now last)
    assert list(named.to_json()) == ["b", "a"] and named.matching_names("When did the Velmar Bridge open?") == {"b"}
    reloaded = Router(RoutedConfig(), named=True)
    reloaded.load(named.to_json())
    assert reloaded.names == ["b", "a"] and reloaded.to_json() == named.to_json()
    reloaded.pop("b")
    assert reloaded.names == ["a"] and len(reloaded) == 1


@pytest.mark.parametrize("options, message", [({"route_threshold": "5"}, r"route_threshold must be in \[0, 1\]"), ({"route_threshold": "-0.1"}, r"\[0, 1\]"), ({"route_top": "0"}, "route_top must be >= 1")])
def test_routing_options_are_bounded(options, message):
    with pytest.raises(InputError, match=message):
        parse_options(RoutedConfig, options)
    assert parse_options(RoutedConfig, {"route_threshold": "0", "route_top": "3"}).route_top == 3
