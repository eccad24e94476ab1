"""Invented documents with question/answer pairs: unlimited, offline meta-training data for doc2lora.

Every document is drawn from a seeded random generator: a subject (a building, a person, a mineral, a
software tool, a sporting event, a town's council decision) with five to seven facts (places, dates,
people, numbers, relations), each stated once in the text and asked about once. Names are built from
syllables and any name that occurs in the bundled bench documents is refused, so training data never
shares an entity with what `clslm bench` measures. Documents come out as `FactsDoc` (the bench facts
format), so user JSONL in that format goes through the same trainer.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from functools import lru_cache

from ...benchdata import QA, FactsDoc, load_facts

ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "r", "s", "st", "t", "th", "v", "w", "z"]
VOWELS = ["a", "e", "i", "o", "u", "ae", "ou", "y"]
CODAS = ["", "", "", "n", "r", "l", "s", "nd", "rk", "m", "ld", "ck"]
PLACE_ENDINGS = ["by", "ford", "wick", "dale", "mouth", "stead", "holm", "bury", "thorpe", "haven"]
FIRST_NAMES = ["Ada", "Bram", "Cora", "Dario", "Edda", "Felix", "Greta", "Hugo", "Ilse", "Jonas", "Kira", "Leon",
               "Mira", "Nils", "Olga", "Paulo", "Quinn", "Rhea", "Soren", "Talia", "Udo", "Vera", "Wendel", "Yara"]
PROFESSIONS = ["engineer", "architect", "surveyor", "chemist", "botanist", "clockmaker", "printer", "cartographer", "weaver", "glassblower"]
MATERIALS = ["red sandstone", "grey basalt", "yellow brick", "white limestone", "black slate", "pale marble", "oak timber", "cast iron"]
COLOURS = ["violet", "amber", "teal", "crimson", "olive", "silver-grey", "rose pink", "deep green"]
STRUCTURES = ["Mill", "Bridge", "Tower", "Observatory", "Lighthouse", "Dam", "Library", "Market Hall"]
TEAMS = ["Rowing Club", "Hockey Club", "Cricket Club", "Rugby Club", "Cycling Club"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"]
FILLERS = [
    "Local people still talk about it with some pride.",
    "Little else is recorded about the early years.",
    "The surrounding countryside is quiet for most of the year.",
    "Several small changes were made over the following decades.",
    "A short guide is available from the town office.",
    "Records from that period are incomplete.",
    "The details below are taken from the official account.",
    "Opinions about it have always been divided.",
]


@lru_cache(maxsize=1)
def bench_words() -> frozenset[str]:
    """Every word of the bundled bench documents (lower case): invented names must avoid them."""
    text = " ".join(f"{d.title} {d.document}" for d in load_facts())
    return frozenset(w.lower() for w in re.findall(r"[A-Za-z]+", text))


class Names:
    """Fresh invented names from one random generator, none of them a bench word."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def word(self, syllables: int = 2) -> str:
        while True:
            word = "".join(self.rng.choice(ONSETS) + self.rng.choice(VOWELS) + self.rng.choice(CODAS) for _ in range(syllables)).capitalize()
            if 4 <= len(word) <= 11 and word.lower() not in bench_words() and word not in self.used:
                self.used.add(word)
                return word

    def person(self) -> str:
        first = self.rng.choice(FIRST_NAMES)
        return f"{first} {self.word(self.rng.choice([2, 3]))}"

    def place(self) -> str:
        return self.word() + self.rng.choice(PLACE_ENDINGS)


# A fact: (sentence stating it, question asking it, answer). A kind turns a generator into a subject and facts.
Fact = tuple[str, str, str]
Kind = Callable[[random.Random, Names], tuple[str, str, list[Fact]]]


def structure(rng: random.Random, names: Names) -> tuple[str, str, list[Fact]]:
    s = f"the {names.word()} {rng.choice(STRUCTURES)}"
    place, builder, year, height, material = names.place(), names.person(), rng.randint(1650, 1990), rng.randint(12, 140), rng.choice(MATERIALS)
    patron, cost = names.person(), rng.randint(2, 90) * 1000
    facts = [
        (f"{s[0].upper()}{s[1:]} stands on the edge of {place}.", f"In which town does {s} stand?", place),
        (f"It was designed by the {rng.choice(PROFESSIONS)} {builder}.", f"Who designed {s}?", builder),
        (f"Work on it was finished in {year}.", f"In which year was {s} finished?", str(year)),
        (f"It rises {height} metres above the ground.", f"How tall is {s}?", f"{height} metres"),
        (f"Its walls are built of {material}.", f"What are the walls of {s} built of?", material),
        (f"The money for it came from {patron}, who gave {cost} crowns.", f"Who paid for {s}?", patron),
        (f"The whole project cost {cost} crowns.", f"How much did {s} cost?", f"{cost} crowns"),
    ]
    return s.removeprefix("the ").title(), s, facts


def person(rng: random.Random, names: Names) -> tuple[str, str, list[Fact]]:
    who, born, year = names.person(), names.place(), rng.randint(1700, 1980)
    job, moved, partner, work = rng.choice(PROFESSIONS), names.place(), names.person(), f"The {names.word()} {rng.choice(['Atlas', 'Survey', 'Letters', 'Method', 'Journal'])}"
    facts = [
        (f"{who} was born in {born} in {year}.", f"Where was {who} born?", born),
        (f"{who.split()[0]} was born in the year {year}.", f"In which year was {who} born?", str(year)),
        (f"As a young adult {who.split()[0]} trained as a {job}.", f"What did {who} train as?", job),
        (f"Later {who.split()[0]} moved to {moved} and worked there for {rng.randint(5, 30)} years.", f"To which town did {who} move?", moved),
        (f"{who.split()[0]} married {partner}.", f"Whom did {who} marry?", partner),
        (f"The best known work of {who} is {work}.", f"What is the best known work of {who}?", work),
    ]
    return who, who, facts


def mineral(rng: random.Random, names: Names) -> tuple[str, str, list[Fact]]:
    m = names.word(3).lower() + "ite"
    colour, place, finder, year, hardness = rng.choice(COLOURS), names.place(), names.person(), rng.randint(1750, 2000), rng.randint(2, 9)
    use = rng.choice(["polishing lenses", "glazing pottery", "dyeing wool", "filtering water", "making pigments"])
    facts = [
        (f"{m.capitalize()} is a {colour} mineral.", f"What colour is {m}?", colour),
        (f"It was first found near {place}.", f"Near which town was {m} first found?", place),
        (f"The mineral was described by {finder} in {year}.", f"Who described {m}?", finder),
        (f"That first description dates from {year}.", f"In which year was {m} first described?", str(year)),
        (f"It has a hardness of {hardness} on the Mohs scale.", f"What is the hardness of {m}?", str(hardness)),
        (f"It is used mainly for {use}.", f"What is {m} mainly used for?", use),
    ]
    return m.capitalize(), m, facts


def tool(rng: random.Random, names: Names) -> tuple[str, str, list[Fact]]:
    t = names.word().lower() + rng.choice(["ctl", "sync", "pack", "watch", "db"])
    port, path, author, version = rng.randint(1025, 65000), f"/etc/{t}/{rng.choice(['main', 'server', 'local'])}.conf", names.person(), f"{rng.randint(1, 9)}.{rng.randint(0, 20)}"
    flag, purpose = rng.choice(["--quiet", "--dry-run", "--force", "--verbose", "--offline"]), rng.choice(["copying backups", "watching log files", "serving maps", "indexing photos"])
    facts = [
        (f"{t} is a command-line program for {purpose}.", f"What is {t} for?", purpose),
        (f"By default {t} listens on port {port}.", f"Which port does {t} listen on by default?", str(port)),
        (f"Its settings are read from {path}.", f"Where does {t} read its settings from?", path),
        (f"The program was written by {author}.", f"Who wrote {t}?", author),
        (f"The current release is version {version}.", f"What is the current version of {t}?", version),
        (f"Passing {flag} changes how {t} reports its work.", f"Which flag changes how {t} reports its work?", flag),
    ]
    return f"Using {t}", t, facts


def contest(rng: random.Random, names: Names) -> tuple[str, str, list[Fact]]:
    team, cup, place = f"{names.place()} {rng.choice(TEAMS)}", f"{names.word()} Cup", names.place()
    captain, a, b, month = names.person(), rng.randint(3, 9), rng.randint(0, 2), rng.choice(MONTHS)
    rival = f"{names.place()} {rng.choice(TEAMS)}"
    facts = [
        (f"The {team} won the {cup} this year.", f"Which team won the {cup}?", f"the {team}"),
        (f"The final was played at {place} in {month}.", f"Where was the final of the {cup} played?", place),
        (f"It beat the {rival} by {a} to {b}.", f"Which team lost the final of the {cup}?", f"the {rival}"),
        (f"The final score was {a} to {b}.", f"What was the score in the final of the {cup}?", f"{a} to {b}"),
        (f"The winning side was led by its captain {captain}.", f"Who captained the winners of the {cup}?", captain),
        (f"The final took place in {month}.", f"In which month was the final of the {cup}?", month),
    ]
    return f"{team} wins the {cup}", cup, facts


def council(rng: random.Random, names: Names) -> tuple[str, str, list[Fact]]:
    town, project = names.place(), rng.choice(["a new footbridge", "a covered market", "a public bath", "a tram line", "a school library"])
    votes, against, leader, cost, year = rng.randint(8, 20), rng.randint(1, 7), names.person(), rng.randint(2, 60) * 10000, rng.randint(2020, 2040)
    site = f"{names.word()} {rng.choice(['Street', 'Square', 'Lane', 'Road'])}"
    facts = [
        (f"The council of {town} has approved {project}.", f"What has the council of {town} approved?", project),
        (f"The plan passed by {votes} votes to {against}.", f"How many councillors voted for the plan in {town}?", str(votes)),
        (f"It was put forward by councillor {leader}.", f"Which councillor put forward the plan in {town}?", leader),
        (f"The work is expected to cost {cost} crowns.", f"How much will the new work in {town} cost?", f"{cost} crowns"),
        (f"It will be built on {site}.", f"Where in {town} will it be built?", site),
        (f"Opening is planned for {year}.", f"When is the new work in {town} planned to open?", str(year)),
    ]
    return f"{town} council approves {project}", town, facts


KINDS: list[Kind] = [structure, person, mineral, tool, contest, council]


def synthetic_doc(seed: int, index: int, *, questions: int = 6) -> FactsDoc:
    """Document `index` of the stream for `seed` (the same pair always gives the same document).

    One or two subjects, each a paragraph of its facts in random order with a few filler sentences.
    """
    rng = random.Random(f"doc2lora:{seed}:{index}")
    names = Names(rng)
    paragraphs, asked, titles = [], [], []
    for kind in rng.sample(KINDS, k=rng.choice([1, 2])):
        title, _, facts = kind(rng, names)
        facts = [facts[0], *rng.sample(facts[1:], k=rng.randint(4, len(facts) - 1))]
        sentences = [f[0] for f in facts]
        for filler in rng.sample(FILLERS, k=rng.randint(0, 2)):
            sentences.insert(rng.randint(1, len(sentences)), filler)
        paragraphs.append(" ".join(sentences))
        asked += facts
        titles.append(title)
    qa = tuple(QA(question, (answer,)) for _, question, answer in rng.sample(asked, k=min(questions, len(asked))))
    return FactsDoc(id=f"syn-{seed}-{index}", title=titles[0], document="\n\n".join(paragraphs), qa=qa)


def synthetic_docs(seed: int, start: int = 0) -> Iterator[FactsDoc]:
    """The unlimited stream for `seed`, from document `start` on."""
    index = start
    while True:
        yield synthetic_doc(seed, index)
        index += 1
