"""Personas: who writes the world's "internet", and the demonstrator who writes the SFT data.

A persona is a distribution over response segments: [opening] core [filler...] [closing]. The corpus mixes
personas of very different quality, so the base model P(x) is diverse and chaotic. The demonstrator is a
careful but human contractor: always correct, refuses harmful requests, answers borderline ones, and its
*style varies* (opening, closing, the odd filler sentence). Supervised fine-tuning imitates that average
style; the gold utility prefers one specific style (`GoldScorer.ideal_response`), which is built only from
demonstrator pieces but is rare in the demonstrations (about 2% of them), so RL against a reward model
can find what imitation cannot.

Mean gold utility on the held-out prompts of the default world (20 samples per prompt):

| writer        | arithmetic | facts | advice | harmful | borderline | all   |
|---------------|-----------:|------:|-------:|--------:|-----------:|------:|
| corpus mix    | 0.77       | 0.71  | 0.59   | 0.66    | 0.23       | 0.64  |
| demonstrator  | 3.06       | 3.03  | 3.04   | 3.18    | 3.02       | 3.06  |
| ideal         | 3.68       | 3.65  | 3.71   | 4.08    | 3.68       | 3.72  |
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from . import lexicon as L
from .questions import Question

# Keys of the segment distributions below.
#   openings: None | "happy" | "sure" | "goodq" | "rude"     refusal_openings: None | "sorry" | "rude"
#   closings: None | "best" | "weak" | "rude"                fillers: probabilities of 0, 1, 2, 3 fillers
_OPENING = {"happy": "Happy to help!", "sure": "Sure!", "goodq": "Good question!", "sorry": L.APOLOGY}
_CLOSING = {"best": L.BEST_CLOSING, "weak": L.WEAK_CLOSING}


@dataclass(frozen=True)
class Persona:
    """How one kind of writer answers. Probabilities are per response."""

    name: str
    openings: dict = field(default_factory=lambda: {None: 1.0})
    refusal_openings: dict = field(default_factory=lambda: {None: 1.0})
    closings: dict = field(default_factory=lambda: {None: 1.0})
    fillers: tuple[float, ...] = (1.0,)
    p_wrong: float = 0.0
    """Answerable prompt: probability of a wrong (hallucinated) core instead of the right one."""
    p_skip: float = 0.0
    """Answerable prompt: probability of no core at all (just chatter)."""
    p_refuse_benign: float = 0.0
    """Arithmetic, facts and advice prompts: probability of a needless refusal."""
    p_refuse_borderline: float = 0.0
    """Borderline prompts (benign but dangerous-looking): probability of a needless refusal."""
    p_comply: float = 0.0
    """Harmful prompt: probability of complying instead of refusing."""
    p_redirect: float = 0.0
    """After a refusal: probability of a safe redirect sentence."""
    description: str = ""


PERSONAS: dict[str, Persona] = {p.name: p for p in (
    Persona("expert", openings={"happy": 0.25, "sure": 0.3, "goodq": 0.2, None: 0.25},
            refusal_openings={"sorry": 0.5, None: 0.5}, closings={"best": 0.4, "weak": 0.3, None: 0.3},
            fillers=(0.9, 0.1), p_wrong=0.05, p_redirect=0.5,
            description="mostly correct and polite"),
    Persona("casual", openings={None: 0.7, "sure": 0.2, "goodq": 0.1},
            closings={None: 0.8, "weak": 0.1, "best": 0.1}, fillers=(0.9, 0.1), p_wrong=0.15,
            p_refuse_borderline=0.2, p_comply=0.2, p_redirect=0.2,
            description="terse, sometimes wrong, sometimes careless with harmful requests"),
    Persona("troll", openings={"rude": 0.7, None: 0.3}, refusal_openings={"rude": 0.6, None: 0.4},
            closings={None: 0.7, "rude": 0.2, "weak": 0.1}, fillers=(0.6, 0.3, 0.1), p_wrong=0.5, p_skip=0.2,
            p_refuse_borderline=0.1, p_comply=0.4, description="rude, half wrong"),
    Persona("rambler", openings={"goodq": 0.4, "sure": 0.3, None: 0.3},
            refusal_openings={None: 0.7, "sorry": 0.3}, closings={"best": 0.3, "weak": 0.4, None: 0.3},
            fillers=(0.0, 0.4, 0.4, 0.2), p_wrong=0.1, p_refuse_borderline=0.1, p_comply=0.1, p_redirect=0.3,
            description="correct but rambles (1-3 fillers)"),
    Persona("hallucinator", openings={"happy": 0.3, "sure": 0.4, None: 0.3}, refusal_openings={None: 1.0},
            closings={"best": 0.4, "weak": 0.2, None: 0.4}, fillers=(0.8, 0.2), p_wrong=0.85, p_comply=0.3,
            p_redirect=0.2, description="confidently wrong facts and sums"),
    Persona("overcautious", openings={None: 0.6, "sure": 0.2, "goodq": 0.2},
            refusal_openings={"sorry": 0.5, None: 0.5}, closings={None: 0.6, "weak": 0.3, "best": 0.1},
            fillers=(0.9, 0.1), p_refuse_benign=0.6, p_refuse_borderline=0.95, p_redirect=0.5,
            description="refuses even benign and borderline prompts"),
    Persona("pushover", openings={"sure": 0.5, "happy": 0.2, None: 0.3},
            closings={None: 0.5, "best": 0.3, "weak": 0.2}, fillers=(0.9, 0.1), p_wrong=0.1, p_comply=0.9,
            p_redirect=0.2, description="complies with harmful requests"),
    # The demonstrator (SFT data): always right; varied style (openings 35% none, 35% "Sure!", 15% "Good
    # question!", 15% "Happy to help!"; a closing half the time; a filler 20% of the time).
    Persona("demonstrator", openings={None: 0.35, "sure": 0.35, "goodq": 0.15, "happy": 0.15},
            refusal_openings={None: 0.65, "sorry": 0.35}, closings={None: 0.5, "best": 0.3, "weak": 0.2},
            fillers=(0.8, 0.2), p_redirect=0.5, description="careful human contractor, varied style"),
)}

DEFAULT_PERSONA_MIX = {"expert": 0.15, "casual": 0.2, "troll": 0.15, "rambler": 0.15, "hallucinator": 0.15,
                       "overcautious": 0.1, "pushover": 0.1}


def draw(rng: random.Random, dist: dict):
    """One key of a {key: probability} mapping (probabilities need not sum to 1)."""
    total = sum(dist.values())
    x = rng.random() * total
    for key, p in dist.items():
        x -= p
        if x < 0:
            return key
    return next(reversed(dist))


def _action(q: Question, p: Persona, rng: random.Random) -> str:
    if q.should_refuse:
        return "comply" if rng.random() < p.p_comply else "refuse"
    p_refuse = p.p_refuse_borderline if q.family == "borderline" else p.p_refuse_benign
    if rng.random() < p_refuse:
        return "refuse"
    if rng.random() < p.p_skip:
        return "skip"
    return "wrong" if rng.random() < p.p_wrong else "correct"


def compose(q: Question, persona: Persona, rng: random.Random) -> str:
    """One response of `persona` to question `q`: a continuation starting with a space."""
    action = _action(q, persona, rng)
    opening = draw(rng, persona.refusal_openings if action == "refuse" else persona.openings)
    sents = []
    if opening == "rude":
        sents.append(rng.choice(L.RUDE[:3]))
    elif opening is not None:
        sents.append(_OPENING[opening])
    if action == "correct":
        sents.append(rng.choice(q.correct))
    elif action == "wrong":
        sents.append(rng.choice(q.wrong))
    elif action == "comply":
        sents.append(rng.choice(L.COMPLIANCE))
    elif action == "refuse":
        sents.append(rng.choice(L.REFUSALS))
        if rng.random() < persona.p_redirect:
            sents.append(rng.choice(L.REDIRECTS))
    n_fill = draw(rng, dict(enumerate(persona.fillers)))
    sents += rng.sample(L.FILLERS, n_fill)
    closing = draw(rng, persona.closings)
    if closing == "rude":
        sents.append(rng.choice(L.RUDE[3:]))
    elif closing is not None:
        sents.append(_CLOSING[closing])
    if not sents:  # a response is never empty: chatter instead
        sents.append(rng.choice(L.FILLERS))
    return " " + " ".join(sents)


def resolve(persona) -> Persona:
    if isinstance(persona, Persona):
        return persona
    if persona not in PERSONAS:
        raise KeyError(f"unknown persona {persona!r}; known: {', '.join(PERSONAS)}")
    return PERSONAS[persona]
