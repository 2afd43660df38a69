"""The fictional knowledge base, the question pool of every family, and prompt parsing.

A *question* is the bare request ("What is 7 plus 5?"); a *prompt* is a question, possibly decorated with
a greeting and thanks ("Hi! What is 7 plus 5? Thanks!"), in standard form ("User: ...\\nAssistant:").
Decorations never change the answer, so they multiply the prompts without adding knowledge to memorise.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from . import lexicon as L

_NON_WORD = re.compile(r"[^a-z0-9']+")
_ARITH_Q = re.compile(r"^(?:what|how much) is (\d{1,3}) (plus|minus|times) (\d{1,3})$")


def normalize(text: str) -> str:
    """Lower case, curly quotes straightened, every run of other characters one space: the key under which
    sentences and questions are matched (so whitespace and punctuation never matter)."""
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    return _NON_WORD.sub(" ", text).strip()


def format_prompt(question: str) -> str:
    """The standard text form of a one-turn prompt."""
    return f"User: {question.strip()}\nAssistant:"


def question_text(prompt) -> str:
    """The user's question from a standard-form prompt, a bare question, or a list of chat messages."""
    if isinstance(prompt, list):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if not users:
            raise KeyError("conversational prompt has no user message")
        return users[-1].strip()
    text = str(prompt)
    at = text.rfind("User:")
    if at >= 0:
        text = text[at + len("User:"):]
    text = text.strip()
    if text.endswith("Assistant:"):
        text = text[: -len("Assistant:")]
    return text.strip()


# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Country:
    name: str
    capital: str
    flag: str
    animal: str

    def value(self, attribute: str) -> str:
        return {"capital": self.capital, "flag": self.flag, "national animal": self.animal}[attribute]


@dataclass(frozen=True)
class KnowledgeBase:
    """Invented countries, each with a capital, a flag colour and a national animal."""

    countries: tuple[Country, ...]

    @classmethod
    def generate(cls, n_countries: int, seed: int) -> KnowledgeBase:
        rng = random.Random(f"kb-{seed}")
        names = [s + e for s in L.COUNTRY_START for e in L.COUNTRY_END]
        cities = [s + e for s in L.CITY_START for e in L.CITY_END]
        if n_countries > min(len(names), len(cities)):
            limit = min(len(names), len(cities))
            raise ValueError(f"n_countries={n_countries}: at most {limit} countries can be named")
        rng.shuffle(names)
        rng.shuffle(cities)
        taken = set(names)
        cities = [c for c in cities if c not in taken]
        out = [Country(names[i].capitalize(), cities[i].capitalize(), rng.choice(L.COLORS),
                       rng.choice(L.ANIMALS)) for i in range(n_countries)]
        return cls(tuple(out))

    def find(self, name: str) -> Country | None:
        name = name.lower()
        for c in self.countries:
            if c.name.lower() == name:
                return c
        return None

    def fact_sentence(self, country: Country, attribute: str, value: str | None = None) -> str:
        value = country.value(attribute) if value is None else value
        return L.FACT_ANSWER[attribute].format(c=country.name, v=value)

    def wrong_values(self, country: Country, attribute: str) -> list[str]:
        """Other entities' values: what a hallucination says instead."""
        if attribute == "capital":
            pool = [c.capital for c in self.countries]
        else:
            pool = list(L.COLORS if attribute == "flag" else L.ANIMALS)
        right = country.value(attribute)
        return sorted({v for v in pool if v != right})

    def encyclopedia(self, country: Country, rng: random.Random) -> str:
        """One encyclopedia line stating all facts of a country, sentences in random order."""
        sents = [self.fact_sentence(country, a) for a in L.ATTRIBUTES]
        rng.shuffle(sents)
        return " ".join(sents)


# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Question:
    """A bare question and what answers it.

    key: ("arithmetic", a, op, b) | ("facts", country, attribute) | ("advice", topic) |
         ("harmful", template, object) | ("borderline", topic).
    correct / wrong: core sentences that answer it right / wrong (empty for harmful requests, which are
    answered by a refusal).
    """

    text: str
    family: str
    key: tuple
    correct: tuple[str, ...]
    wrong: tuple[str, ...]

    @property
    def should_refuse(self) -> bool:
        return self.family == "harmful"


def arithmetic_question(a: int, op: str, b: int, template: str) -> Question:
    r = L.OPS[op](a, b)
    wrong = sorted({max(0, r + d) for d in (-3, -2, -1, 1, 2, 3, 10)} - {r})
    return Question(template.format(a=a, op=op, b=b), "arithmetic", ("arithmetic", a, op, b),
                    (f"{a} {op} {b} is {r}.",), tuple(f"{a} {op} {b} is {w}." for w in wrong))


def arithmetic_facts(max_operand: int) -> list[tuple[int, str, int]]:
    """The arithmetic table: every (a, op, b) with operands 0..max_operand and a non-negative result."""
    return [(a, op, b) for op in L.OPS for a in range(max_operand + 1) for b in range(max_operand + 1)
            if op != "minus" or a >= b]


def build_questions(kb: KnowledgeBase, max_operand: int) -> list[Question]:
    """Every question of the world, in a fixed order."""
    qs: list[Question] = []
    for a, op, b in arithmetic_facts(max_operand):
        qs += [arithmetic_question(a, op, b, t) for t in L.ARITH_QUESTIONS]
    for c in kb.countries:
        for attr in L.ATTRIBUTES:
            right = (kb.fact_sentence(c, attr),)
            wrong = tuple(kb.fact_sentence(c, attr, v) for v in kb.wrong_values(c, attr))
            qs += [Question(t.format(c=c.name), "facts", ("facts", c.name, attr), right, wrong)
                   for t in L.FACT_QUESTIONS[attr]]
    for topic, (noun, verb, tips, bad) in L.ADVICE.items():
        qs += [Question(t.format(noun=noun, verb=verb), "advice", ("advice", topic), tips, (bad,))
               for t in L.ADVICE_QUESTIONS]
    for name, (action, objects) in L.HARMFUL.items():
        for o in objects:
            qs += [Question(t.format(action=action.format(o=o)), "harmful", ("harmful", name, o), (), ())
                   for t in L.HARMFUL_QUESTIONS]
    for topic, (action, good, bad) in L.BORDERLINE.items():
        qs += [Question(t.format(action=action), "borderline", ("borderline", topic), good, (bad,))
               for t in L.BORDERLINE_QUESTIONS]
    return qs


def decorate(question: str, prefix: str, suffix: str) -> str:
    return " ".join(p for p in (prefix, question, suffix) if p)


_PREFIX_NORMS = sorted((normalize(p) for p in L.PREFIXES if p), key=len, reverse=True)
_SUFFIX_NORMS = sorted((normalize(s) for s in L.SUFFIXES if s), key=len, reverse=True)


def strip_decorations(norm: str) -> str:
    """Remove one known greeting and one known thanks from a normalised question."""
    for p in _PREFIX_NORMS:
        if norm.startswith(p + " "):
            norm = norm[len(p) + 1:]
            break
    for s in _SUFFIX_NORMS:
        if norm.endswith(" " + s):
            norm = norm[: -len(s) - 1]
            break
    return norm


class QuestionIndex:
    """Maps any prompt of the world (decorated or not, any text form) to its `Question`."""

    def __init__(self, questions: list[Question]):
        self.by_norm: dict[str, Question] = {}
        for q in questions:
            n = normalize(q.text)
            if n in self.by_norm and self.by_norm[n] != q:
                raise ValueError(f"two questions normalise to the same text: {q.text!r}")
            self.by_norm[n] = q

    def lookup(self, prompt) -> Question:
        raw = question_text(prompt)
        norm = strip_decorations(normalize(raw))
        q = self.by_norm.get(norm)
        if q is not None:
            return q
        m = _ARITH_Q.match(norm)
        if m:  # arithmetic beyond the table is still well defined
            a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
            if op != "minus" or a >= b:
                return arithmetic_question(a, op, b, "What is {a} {op} {b}?")
        raise KeyError(f"unknown question {raw!r}: not a prompt of this synthetic world "
                       "(expected one of its templates, e.g. 'User: What is 3 plus 4?\\nAssistant:')")
