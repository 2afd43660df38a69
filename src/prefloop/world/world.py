"""Building the synthetic assistant world from a seed, and writing / loading its files.

Prompt splits: every family's questions are shuffled and a fraction (`heldout_fraction`) is kept for the
held-out set; train prompts are drawn from the other questions only, with greetings and thanks added to
about half of them (`decorated_fraction`). So train and held-out prompts never share a question (with any
decoration), and no held-out question appears in the corpus dialogues. Held-out questions are other
phrasings of train requests, other objects of train templates, or facts asked in no dialogue at all: the
knowledge they need is in the corpus either way (the encyclopedia states every fact of the knowledge base,
the arithmetic table every sum, difference and product, `encyclopedia_repeats` times each).

The corpus is what the base model learns P(x) from: one dialogue document ("User: ...\\nAssistant: ...")
per persona answer, `corpus_responses_per_prompt` per train prompt, personas drawn from `persona_mix`,
plus the encyclopedia and arithmetic-table lines, all shuffled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from prefloop.errors import DataError

from . import lexicon as L
from .annotators import DEFAULT_NOISE, DEFAULT_RATIONALITY, Annotator, label_pairs, make_annotators
from .gold import GoldScorer
from .personas import DEFAULT_PERSONA_MIX, PERSONAS, compose, draw, resolve
from .questions import (
    KnowledgeBase,
    Question,
    QuestionIndex,
    arithmetic_facts,
    build_questions,
    decorate,
    format_prompt,
)

FORMAT = "prefloop.world"
VERSION = 1


@dataclass
class WorldConfig:
    seed: int = 0
    n_countries: int = 30
    """Countries of the fictional knowledge base (capital, flag colour, national animal each)."""
    max_operand: int = 9
    """Arithmetic operands are 0..max_operand (plus, minus with a non-negative result, times)."""
    n_train_prompts: int = 3000
    n_heldout_prompts: int = 300
    heldout_fraction: float = 0.25
    """Fraction of each family's questions reserved for held-out prompts."""
    decorated_fraction: float = 0.5
    """Fraction of prompts with a greeting and/or thanks around the question."""
    corpus_responses_per_prompt: int = 3
    """Persona answers per train prompt in the corpus."""
    encyclopedia_repeats: int = 8
    """How often the corpus states each fact (encyclopedia lines, arithmetic-table lines)."""
    persona_mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PERSONA_MIX))
    n_demonstrations: int = 3000
    """Demonstrator responses, cycling over the train prompts."""
    n_comparisons: int = 3000
    """Labelled persona-vs-persona pairs written to comparisons.jsonl."""
    n_annotators: int = 20
    pool_mix: dict[str, float] = field(default_factory=lambda: {
        "standard": 0.85, "verbose": 0.05, "refusal_averse": 0.05, "politeness_blind": 0.05})
    rationality: float = DEFAULT_RATIONALITY
    noise: float = DEFAULT_NOISE
    family_mix: dict[str, float] = field(default_factory=lambda: {
        "arithmetic": 0.3, "facts": 0.3, "advice": 0.15, "harmful": 0.125, "borderline": 0.125})

    @classmethod
    def preset(cls, name: str = "default", **overrides) -> WorldConfig:
        """"default": ~10k corpus documents (the demo); "tiny": ~1.5k (tests, the 2-minute demo)."""
        presets = {
            "default": {},
            "tiny": dict(n_countries=12, max_operand=6, n_train_prompts=600, n_heldout_prompts=80,
                         corpus_responses_per_prompt=2, encyclopedia_repeats=4, n_demonstrations=600,
                         n_comparisons=600, n_annotators=10),
        }
        if name not in presets:
            raise KeyError(f"unknown world preset {name!r}; known: {', '.join(presets)}")
        return cls(**{**presets[name], **overrides})


# --------------------------------------------------------------------------------------------------------
def _quotas(n: int, mix: dict[str, float], capacity: dict[str, int]) -> dict[str, int]:
    """n split over families in proportion to `mix`, no family above its capacity (the rest moves on)."""
    quota = {f: 0 for f in mix}
    open_ = {f for f in mix if mix[f] > 0 and capacity[f] > 0}
    left = n
    while left > 0 and open_:
        total = sum(mix[f] for f in open_)
        exact = {f: left * mix[f] / total for f in open_}
        add = {f: int(exact[f]) for f in open_}
        for f in sorted(open_, key=lambda f: exact[f] - add[f], reverse=True)[: left - sum(add.values())]:
            add[f] += 1
        for f in sorted(open_):
            take = min(add[f], capacity[f] - quota[f])
            quota[f] += take
            left -= take
            if quota[f] >= capacity[f]:
                open_.discard(f)
        if all(add[f] == 0 for f in open_):
            break
    if left > 0:
        raise ValueError(f"not enough distinct prompts: {left} more than the world's questions allow")
    return quota


def _draw_prompts(questions: list[Question], n: int, rng: random.Random,
                  decorated_fraction: float) -> list[str]:
    """n distinct prompts from these questions: each question once (shuffled) before any twice, and so on."""
    decorations = [(p, s) for p in L.PREFIXES for s in L.SUFFIXES]
    orders = []
    for _ in questions:
        order = [d for d in decorations if d != ("", "")]
        rng.shuffle(order)
        order.insert(0 if rng.random() >= decorated_fraction else rng.randrange(1, len(order) + 1), ("", ""))
        orders.append(order)
    out: list[str] = []
    for k in range(len(decorations)):
        idx = list(range(len(questions)))
        rng.shuffle(idx)
        for i in idx:
            if len(out) == n:
                return out
            out.append(format_prompt(decorate(questions[i].text, *orders[i][k])))
    return out


def split_prompts(cfg: WorldConfig, questions: list[Question]) -> tuple[list[str], list[str]]:
    rng = random.Random(f"prompts-{cfg.seed}")
    n_dec = len(L.PREFIXES) * len(L.SUFFIXES)
    train_q, held_q = {}, {}
    for fam in L.FAMILIES:
        qs = [q for q in questions if q.family == fam]
        rng.shuffle(qs)
        k = max(1, round(len(qs) * cfg.heldout_fraction))
        held_q[fam], train_q[fam] = qs[:k], qs[k:]
    mix = {f: cfg.family_mix.get(f, 0.0) for f in L.FAMILIES}
    unknown = set(cfg.family_mix) - set(L.FAMILIES)
    if unknown:
        raise KeyError(f"unknown families in family_mix: {sorted(unknown)}; known: {', '.join(L.FAMILIES)}")
    out = []
    for n, split in ((cfg.n_train_prompts, train_q), (cfg.n_heldout_prompts, held_q)):
        quota = _quotas(n, mix, {f: len(split[f]) * n_dec for f in L.FAMILIES})
        prompts = [p for f in L.FAMILIES
                   for p in _draw_prompts(split[f], quota[f], rng, cfg.decorated_fraction)]
        rng.shuffle(prompts)
        out.append(prompts)
    return out[0], out[1]


# --------------------------------------------------------------------------------------------------------
@dataclass
class World:
    """A built world. `questions`: every question of the world (train, held-out and unused); prompts are
    standard-form text; `corpus`: pretraining documents; `demonstrations`: {"prompt", "completion"};
    `gold`: the hidden judge; `annotators`: simulated people bound to it."""

    config: WorldConfig
    kb: KnowledgeBase
    questions: list[Question]
    train_prompts: list[str]
    heldout_prompts: list[str]
    corpus: list[str]
    demonstrations: list[dict]
    gold: GoldScorer
    annotators: list[Annotator]

    def question(self, prompt) -> Question:
        return self.gold.question(prompt)

    def family(self, prompt) -> str:
        return self.gold.family(prompt)

    def persona_response(self, prompt, persona, rng: random.Random | None = None) -> str:
        """One response of a persona (name or `Persona`) to a prompt of this world."""
        return compose(self.question(prompt), resolve(persona), rng or random.Random())

    def ideal_response(self, prompt) -> str:
        return self.gold.ideal_response(prompt)

    def label_pairs(self, prompts, responses_a, responses_b, seed: int = 0,
                    annotators: list[Annotator] | None = None) -> list[dict]:
        """Comparison records labelled by this world's annotators (see `annotators.label_pairs`)."""
        return label_pairs(prompts, responses_a, responses_b, annotators or self.annotators, seed)

    def gold_checks(self, n: int, seed: int = 0) -> list[tuple[str, str, str]]:
        """n (prompt, better, worse) pairs with a known answer: the gold-best response against a weak persona's
        (troll or hallucinator) that gold scores lower, for measuring annotators as gold items do."""
        rng = random.Random(f"gold-checks-{seed}")
        out: list[tuple[str, str, str]] = []
        for _ in range(50 * n):
            if len(out) == n:
                break
            p = rng.choice(self.train_prompts)
            best, weak = self.ideal_response(p), self.persona_response(p, rng.choice(("troll", "hallucinator")), rng)
            if self.gold.score(p, best) > self.gold.score(p, weak):
                out.append((p, best, weak))
        return out

    def persona_comparisons(self, n: int, seed: int = 0) -> list[dict]:
        """n labelled pairs of persona responses (the corpus mix plus the demonstrator) to train prompts."""
        rng = random.Random(f"comparisons-{seed}")
        mix = dict(self.config.persona_mix)
        mix["demonstrator"] = mix.get("demonstrator", 0.0) + 0.3 * sum(mix.values())
        prompts, ra, rb = [], [], []
        for _ in range(n):
            p = rng.choice(self.train_prompts)
            a = self.persona_response(p, draw(rng, mix), rng)
            for _ in range(5):
                b = self.persona_response(p, draw(rng, mix), rng)
                if b != a:
                    break
            prompts.append(p)
            ra.append(a)
            rb.append(b)
        return self.label_pairs(prompts, ra, rb, seed=seed)


def _corpus(cfg: WorldConfig, kb: KnowledgeBase, gold: GoldScorer, train: list[str]) -> list[str]:
    rng = random.Random(f"corpus-{cfg.seed}")
    for name in cfg.persona_mix:
        resolve(name)
    docs = []
    for p in train:
        q = gold.question(p)
        for _ in range(cfg.corpus_responses_per_prompt):
            docs.append(p + compose(q, PERSONAS[draw(rng, cfg.persona_mix)], rng))
    for _ in range(cfg.encyclopedia_repeats):
        docs += [kb.encyclopedia(c, rng) for c in kb.countries]
        table = [f"{a} {op} {b} is {L.OPS[op](a, b)}." for a, op, b in arithmetic_facts(cfg.max_operand)]
        rng.shuffle(table)
        docs += [" ".join(table[i:i + 6]) for i in range(0, len(table), 6)]
    rng.shuffle(docs)
    return docs


def build_world(cfg: WorldConfig | None = None) -> World:
    """The whole world, deterministic in `cfg` (same config, same world)."""
    cfg = cfg or WorldConfig()
    kb = KnowledgeBase.generate(cfg.n_countries, cfg.seed)
    questions = build_questions(kb, cfg.max_operand)
    gold = GoldScorer(kb, QuestionIndex(questions))
    train, heldout = split_prompts(cfg, questions)
    corpus = _corpus(cfg, kb, gold, train)
    if cfg.n_demonstrations and not train:
        raise ValueError("n_demonstrations > 0 needs train prompts (n_train_prompts > 0)")
    rng = random.Random(f"demonstrations-{cfg.seed}")
    order = list(train)
    demos = []
    for i in range(cfg.n_demonstrations):
        if i % len(order) == 0:
            rng.shuffle(order)
        p = order[i % len(order)]
        demos.append({"prompt": p, "completion": compose(gold.question(p), PERSONAS["demonstrator"], rng)})
    annotators = make_annotators(cfg.n_annotators, cfg.pool_mix, cfg.rationality, cfg.noise, cfg.seed,
                                 gold=gold)
    return World(cfg, kb, questions, train, heldout, corpus, demos, gold, annotators)


# --------------------------------------------------------------------------------------------------------
def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _jsonl(rows) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _corpus_hash(corpus: list[str]) -> str:
    return hashlib.sha256("\n".join(corpus).encode()).hexdigest()


_README = """# A synthetic assistant world (prefloop)

Written by `prefloop world` / `prefloop.world.write_world`; `prefloop.world.load_world(this_dir)` rebuilds
the identical world, with its hidden gold judge, from `world.json`.

- `corpus.jsonl`: {"text"} per document: persona dialogues "User: ...\\nAssistant: ..." (good and bad
  answers mixed) and encyclopedia / arithmetic-table lines. Pretraining data for the base model.
- `demonstrations.jsonl`: {"prompt", "completion"} written by the demonstrator persona (SFT data).
- `prompts_train.jsonl`, `prompts_heldout.jsonl`: {"prompt"}; disjoint questions.
- `comparisons.jsonl`: persona-vs-persona pairs on train prompts labelled by simulated annotators:
  {"id", "prompt", "chosen", "rejected", "margin" (strength 1-3), "annotator", "pool",
  "meta": {"gold_chosen", "gold_rejected"}}.
- `world.json`: the configuration (and counts) the world was built from.
"""


def write_world(world: World, out_dir: str | os.PathLike) -> Path:
    """Write the world's files (each atomically: a temporary file, then a rename)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = world.config
    comparisons = world.persona_comparisons(cfg.n_comparisons, seed=cfg.seed)
    _write_atomic(out / "corpus.jsonl", _jsonl({"text": t} for t in world.corpus))
    _write_atomic(out / "demonstrations.jsonl", _jsonl(world.demonstrations))
    _write_atomic(out / "prompts_train.jsonl", _jsonl({"prompt": p} for p in world.train_prompts))
    _write_atomic(out / "prompts_heldout.jsonl", _jsonl({"prompt": p} for p in world.heldout_prompts))
    _write_atomic(out / "comparisons.jsonl", _jsonl(comparisons))
    meta = {"format": FORMAT, "version": VERSION, "config": dataclasses.asdict(cfg),
            "counts": {"corpus": len(world.corpus), "demonstrations": len(world.demonstrations),
                       "train_prompts": len(world.train_prompts),
                       "heldout_prompts": len(world.heldout_prompts),
                       "comparisons": len(comparisons)},
            "corpus_sha256": _corpus_hash(world.corpus)}
    _write_atomic(out / "world.json", json.dumps(meta, indent=1) + "\n")
    _write_atomic(out / "README.md", _README)
    return out


def _data_error(path: Path, problem: str) -> Exception:
    return DataError.whole(path, problem)


def load_world(path: str | os.PathLike, verify: bool = True) -> World:
    """Rebuild the world written to `path` (a directory or its world.json). With `verify`, check that the
    rebuilt corpus is the one on disk (it is not when another version of prefloop wrote it)."""
    path = Path(path)
    meta_path = path / "world.json" if path.is_dir() else path
    if not meta_path.exists():
        raise _data_error(meta_path, "file not found (not a world directory?)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _data_error(meta_path, f"malformed JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("config"), dict):
        raise _data_error(meta_path, f"not a {FORMAT} file")
    names = {f.name for f in dataclasses.fields(WorldConfig)}
    unknown = sorted(set(meta["config"]) - names)
    if unknown:
        raise _data_error(meta_path, f"unknown config fields {unknown}")
    world = build_world(WorldConfig(**meta["config"]))
    if verify and meta.get("corpus_sha256") not in (None, _corpus_hash(world.corpus)):
        raise _data_error(meta_path, "the rebuilt corpus differs from the one written "
                                     "(written by another version of prefloop?)")
    return world
