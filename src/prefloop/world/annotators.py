"""Simulated annotators: Bradley-Terry choices on the gold utility.

As in Christiano et al. 2017 and Ziegler et al. 2019, a simulated annotator perceives
u' = gold utility + its pool's bias and answers

    P(A preferred to B) = noise / 2 + (1 - noise) * sigmoid(rationality * (u'_A - u'_B))

(with probability `noise` the label is a coin flip). Equivalently it compares the perceived values with
logistic noise of scale 1/rationality added to their difference; the same noise drives the *strength* of a
choice (1..3, like the strength scale of HH-RLHF), Likert ratings (`rate`) and K-way rankings (`rank`,
Plackett-Luce, whose pairwise marginals are exactly the Bradley-Terry probabilities above).

Default rationality and noise (`DEFAULT_RATIONALITY`, `DEFAULT_NOISE`) are calibrated so that a `standard`
annotator agrees with the gold ordering on about 75% of pairs of demonstrator responses to the same
prompt (gold ties excluded): measured 76% (75.7-77.1% over 4 seeds, 4,000 pairs each; 75% with the
default pool mix of `WorldConfig`), matching the 72-77% reported by Stiennon et al. 2020 and Ouyang et al.
2022. Pairs that also differ in correctness are easier: on persona-vs-persona pairs
(`World.persona_comparisons`) agreement is about 86%.

Pools (`POOLS`):
- `standard`: no bias.
- `verbose`: likes long answers, +0.05 per word.
- `refusal_averse`: dislikes every refusal, even an appropriate one, -3.
- `politeness_blind`: ignores openings and closings (their value and their words).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .gold import GoldScorer

DEFAULT_RATIONALITY = 3.5
DEFAULT_NOISE = 0.1
RATING_RANGE = (-3.0, 4.0)
"""Perceived utilities mapped onto a Likert scale: K equal bins between these, open at both ends."""
STRENGTH_CUTS = (0.5, 1.5)
"""|perceived difference| below 0.5: strength 1 (slight); below 1.5: 2; else 3 (strong)."""


@dataclass(frozen=True)
class Pool:
    name: str
    description: str
    bias: Callable[[dict], float]
    """Bias added to the gold utility, from `GoldScorer.details` of the response."""


POOLS: dict[str, Pool] = {p.name: p for p in (
    Pool("standard", "no bias: judges by the gold utility", lambda d: 0.0),
    Pool("verbose", "likes long answers: +0.05 per word", lambda d: 0.05 * d["n_words"]),
    Pool("refusal_averse", "dislikes every refusal, even appropriate ones: -3",
         lambda d: -3.0 * d["refused"]),
    Pool("politeness_blind", "ignores openings and closings",
         lambda d: -(d["opening_score"] + d["closing_score"])),
)}


@dataclass(frozen=True)
class Choice:
    prefer_a: bool
    strength: int
    """1 (slight) .. 3 (strong) preference; 1 when the label was a coin flip."""
    p_a: float
    """The annotator's probability of preferring A (what the label was drawn from)."""


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _logistic(rng: random.Random) -> float:
    u = min(max(rng.random(), 1e-12), 1 - 1e-12)
    return math.log(u / (1 - u))


def _gumbel(rng: random.Random) -> float:
    u = min(max(rng.random(), 1e-12), 1 - 1e-12)
    return -math.log(-math.log(u))


@dataclass
class Annotator:
    """One simulated person. `bias` is a pool name, a callable `details -> float`, or None (the pool's)."""

    id: str
    pool: str = "standard"
    rationality: float = DEFAULT_RATIONALITY
    noise: float = DEFAULT_NOISE
    bias: Callable[[dict], float] | str | None = None
    gold: GoldScorer | None = field(default=None, repr=False)
    seed: int = 0

    def __post_init__(self):
        if self.pool not in POOLS and not callable(self.bias):
            raise KeyError(f"unknown annotator pool {self.pool!r}; known: {', '.join(POOLS)}")
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {self.noise}")
        if self.rationality < 0:
            raise ValueError(f"rationality must be >= 0, got {self.rationality}")
        self._rng = random.Random(f"annotator-{self.id}-{self.seed}")

    def _bias_fn(self) -> Callable[[dict], float]:
        if callable(self.bias):
            return self.bias
        return POOLS[self.bias or self.pool].bias

    def utility(self, prompt, response: str) -> float:
        """Perceived utility u' = gold + bias (no noise)."""
        if self.gold is None:
            raise ValueError(f"annotator {self.id} has no gold scorer: pass gold= "
                             "(the annotators of a World are bound to its gold scorer)")
        return self.perceive(self.gold.details(prompt, response))

    def perceive(self, details: dict) -> float:
        """Perceived utility from `GoldScorer.details` of a response."""
        return details["score"] + self._bias_fn()(details)

    def _noisy_gap(self, gap: float, rng: random.Random) -> float:
        """gap plus logistic noise of scale 1/rationality (none when rationality is infinite)."""
        if math.isinf(self.rationality):
            return gap if gap != 0 else rng.choice((-1e-9, 1e-9))
        if self.rationality == 0:
            return _logistic(rng)
        return gap + _logistic(rng) / self.rationality

    def _p_from_gap(self, gap: float) -> float:
        if math.isinf(self.rationality):
            p = 0.5 if gap == 0 else float(gap > 0)
        else:
            p = _sigmoid(self.rationality * gap)
        return self.noise / 2 + (1 - self.noise) * p

    def prob_prefers(self, prompt, response_a: str, response_b: str) -> float:
        """P(the annotator prefers A to B)."""
        return self._p_from_gap(self.utility(prompt, response_a) - self.utility(prompt, response_b))

    def choose(self, prompt, response_a: str, response_b: str, rng: random.Random | None = None) -> Choice:
        """A pairwise choice with its strength."""
        return self.choose_gap(self.utility(prompt, response_a) - self.utility(prompt, response_b), rng)

    def choose_gap(self, gap: float, rng: random.Random | None = None) -> Choice:
        """A pairwise choice given the perceived utility gap u'_A - u'_B."""
        rng = rng or self._rng
        p_a = self._p_from_gap(gap)
        if rng.random() < self.noise:
            return Choice(rng.random() < 0.5, 1, p_a)
        z = self._noisy_gap(gap, rng)
        strength = 1 + sum(abs(z) >= c for c in STRENGTH_CUTS)
        return Choice(z > 0, strength, p_a)

    def rate(self, prompt, response: str, scale: tuple[int, int] = (1, 3),
             rng: random.Random | None = None) -> int:
        """A Likert rating in [lo, hi]: the noisy perceived utility binned over `RATING_RANGE`."""
        rng = rng or self._rng
        lo, hi = int(scale[0]), int(scale[1])
        if hi <= lo:
            raise ValueError(f"scale must be (lo, hi) with lo < hi, got {scale}")
        if rng.random() < self.noise:
            return rng.randint(lo, hi)
        u = self._noisy_gap(self.utility(prompt, response), rng)
        k = hi - lo + 1
        a, b = RATING_RANGE
        cuts = [a + (b - a) * i / k for i in range(1, k)]
        return lo + sum(u >= c for c in cuts)

    def rank(self, prompt, responses: Sequence[str], rng: random.Random | None = None) -> list[int]:
        """Indices of `responses`, best first: a Plackett-Luce sample with weights exp(rationality * u')."""
        rng = rng or self._rng
        idx = list(range(len(responses)))
        if rng.random() < self.noise:
            rng.shuffle(idx)
            return idx
        us = [self.utility(prompt, r) for r in responses]
        if math.isinf(self.rationality):
            keys = [(u, rng.random()) for u in us]
        else:
            keys = [(self.rationality * u + _gumbel(rng), 0.0) for u in us]
        return sorted(idx, key=lambda i: keys[i], reverse=True)


def _allocate(n: int, mix: dict[str, float]) -> list[str]:
    """n pool names in proportion to `mix` (largest remainder)."""
    total = sum(mix.values())
    if total <= 0 or any(v < 0 for v in mix.values()):
        raise ValueError(f"pool_mix needs non-negative weights with a positive sum, got {mix}")
    exact = {k: n * v / total for k, v in mix.items()}
    counts = {k: int(x) for k, x in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True)[: n - sum(counts.values())]:
        counts[k] += 1
    return [k for k in mix for _ in range(counts[k])]


def make_annotators(n: int, pool_mix: dict[str, float] | None = None,
                    rationality: float = DEFAULT_RATIONALITY, noise: float = DEFAULT_NOISE, seed: int = 0,
                    gold: GoldScorer | None = None) -> list[Annotator]:
    """n annotators, pools in proportion to `pool_mix`; rationalities log-normal around `rationality`
    (median `rationality`, sigma 0.25), so some people are more careful than others."""
    pool_mix = pool_mix or {"standard": 1.0}
    for p in pool_mix:
        if p not in POOLS:
            raise KeyError(f"unknown annotator pool {p!r}; known: {', '.join(POOLS)}")
    rng = random.Random(f"annotators-{seed}")
    pools = _allocate(n, pool_mix)
    rng.shuffle(pools)
    out = []
    for i, pool in enumerate(pools):
        r = rationality if math.isinf(rationality) else rationality * math.exp(rng.gauss(0.0, 0.25))
        out.append(Annotator(f"a{i:02d}", pool, r, noise, gold=gold, seed=seed))
    return out


def label_pairs(prompts: Sequence, responses_a: Sequence[str], responses_b: Sequence[str],
                annotators: Sequence[Annotator], seed: int = 0) -> list[dict]:
    """Comparison records (the JSONL contract of the README's data formats), each pair labelled by one annotator
    drawn at random. Pairs with identical responses (after stripping) or an empty response are skipped:
    the first cannot be learned from and the second is not a valid record.

    Record: {"id", "prompt", "chosen", "rejected", "margin" (strength 1..3), "annotator", "pool",
    "meta": {"gold_chosen", "gold_rejected"}}.
    """
    if not (len(prompts) == len(responses_a) == len(responses_b)):
        raise ValueError("prompts, responses_a and responses_b must have the same length")
    if not annotators:
        raise ValueError("label_pairs needs at least one annotator")
    rng = random.Random(f"label-pairs-{seed}")
    out = []
    for i, (p, a, b) in enumerate(zip(prompts, responses_a, responses_b)):
        if a.strip() == b.strip() or not a.strip() or not b.strip():
            continue
        ann = annotators[rng.randrange(len(annotators))]
        if ann.gold is None:
            ann.utility(p, a)  # raises the error that explains it
        da, db = ann.gold.details(p, a), ann.gold.details(p, b)
        c = ann.choose_gap(ann.perceive(da) - ann.perceive(db), rng)
        (chosen, dc), (rejected, dr) = ((a, da), (b, db)) if c.prefer_a else ((b, db), (a, da))
        out.append({"id": f"pair-{i}", "prompt": p, "chosen": chosen, "rejected": rejected,
                    "margin": float(c.strength), "annotator": ann.id, "pool": ann.pool,
                    "meta": {"gold_chosen": dc["score"], "gold_rejected": dr["score"]}})
    return out


def gold_check_agreement(annotators: Sequence[Annotator], checks: Sequence[tuple], seed: int = 0) -> dict[str, float]:
    """Each annotator's agreement with known answers, as the gold items of an annotation tool measure it:
    every annotator judges every (prompt, better, worse) check, shown in a random order."""
    if not checks:
        raise ValueError("gold_check_agreement needs at least one check")
    rng = random.Random(f"gold-checks-{seed}")
    out = {}
    for ann in annotators:
        right = 0
        for prompt, better, worse in checks:
            flip = rng.random() < 0.5
            a, b = (worse, better) if flip else (better, worse)
            right += ann.choose(prompt, a, b, rng).prefer_a != flip
        out[ann.id] = right / len(checks)
    return out


def drop_unreliable(records: Sequence[dict], agreement: dict[str, float],
                    min_agreement: float) -> tuple[list[dict], list[dict]]:
    """(kept, dropped): records of annotators whose agreement is below `min_agreement` are dropped; records of
    annotators without a measurement are kept."""
    kept, dropped = [], []
    for r in records:
        (dropped if agreement.get(r.get("annotator"), 1.0) < min_agreement else kept).append(r)
    return kept, dropped


def label_rankings(prompts: Sequence, responses: Sequence[Sequence[str]], annotators: Sequence[Annotator],
                   seed: int = 0) -> list[dict]:
    """Ranking records {"id", "prompt", "responses", "ranking" (best first), "annotator", "pool"}."""
    rng = random.Random(f"label-rankings-{seed}")
    out = []
    for i, (p, rs) in enumerate(zip(prompts, responses)):
        ann = annotators[rng.randrange(len(annotators))]
        out.append({"id": f"rank-{i}", "prompt": p, "responses": list(rs), "ranking": ann.rank(p, rs, rng),
                    "annotator": ann.id, "pool": ann.pool})
    return out


def label_ratings(prompts: Sequence, responses: Sequence[str], annotators: Sequence[Annotator],
                  scale: tuple[int, int] = (1, 7), seed: int = 0) -> list[dict]:
    """Rating records {"id", "prompt", "response", "rating", "scale", "annotator", "pool"}."""
    rng = random.Random(f"label-ratings-{seed}")
    out = []
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ann = annotators[rng.randrange(len(annotators))]
        out.append({"id": f"rate-{i}", "prompt": p, "response": r, "rating": ann.rate(p, r, scale, rng),
                    "scale": list(scale), "annotator": ann.id, "pool": ann.pool})
    return out
