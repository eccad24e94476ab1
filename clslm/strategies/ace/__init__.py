"""ace — Agentic Context Engineering (after ACE, arXiv 2510.04618): a playbook that grows by delta patches.

No weight changes. For each chunk of a document a Generator drafts questions and answers them from the
playbook alone, a Reflector compares the drafts with the chunk and lists what was missing or wrong,
and a Curator turns that into a few delta operations (add, update, remove a bullet). A delta is
validated against a schema (whitelisted ops, known ids, length caps) and merged bullet by bullet; the
playbook is never rewritten whole. An invalid delta is asked for once more, then dropped, leaving the
playbook byte-identical. At question time TF-IDF picks the relevant bullets, within a token budget,
and they go above the question.

The roles run on Ollama, an OpenAI-compatible server or, by default, the session's own model.

config.py holds its options, playbook.py the bounded playbook, prompts.py the roles' prompts and the
schemas their replies are checked against, strategy.py the strategy; bullets are ranked by the TF-IDF
ranker jitrl-mvp shares (tfidf.py).
"""

from .config import AceConfig
from .playbook import Playbook
from .prompts import InvalidReply, as_data, delta_schema, lessons_schema, parse_delta, parse_lessons
from .strategy import Ace

__all__ = ["Ace", "AceConfig", "InvalidReply", "Playbook", "as_data", "delta_schema", "lessons_schema", "parse_delta", "parse_lessons"]
