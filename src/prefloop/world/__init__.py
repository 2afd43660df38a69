"""The synthetic assistant world: an offline stand-in for people, prompts and the internet.

No model weights or data sets can be downloaded, so the demo makes its own world in which the true human
preference is known (docs/DESIGN.md; the README's demo section shows what it measures):

- `questions`: five task families from templates and a seeded knowledge base of invented countries
  (arithmetic, facts, advice, harmful requests to refuse, borderline requests that only look harmful);
- `personas`: the writers of the "internet" corpus (expert, casual, troll, rambler, hallucinator,
  overcautious, pushover) and the demonstrator who writes the SFT data;
- `gold`: the hidden gold utility that scores any text;
- `annotators`: simulated people (Bradley-Terry on the gold utility, rationality, noise, biased pools);
- `world`: `WorldConfig` presets, `build_world`, `write_world` / `load_world`.

Pure Python: no torch here.
"""

from .annotators import (
    DEFAULT_NOISE,
    DEFAULT_RATIONALITY,
    POOLS,
    Annotator,
    Choice,
    Pool,
    label_pairs,
    label_rankings,
    label_ratings,
    make_annotators,
)
from .gold import GoldScorer, split_sentences
from .lexicon import FAMILIES
from .personas import DEFAULT_PERSONA_MIX, PERSONAS, Persona
from .questions import Country, KnowledgeBase, Question, format_prompt, normalize, question_text
from .world import World, WorldConfig, build_world, load_world, split_prompts, write_world

__all__ = [
    "DEFAULT_NOISE",
    "DEFAULT_PERSONA_MIX",
    "DEFAULT_RATIONALITY",
    "FAMILIES",
    "PERSONAS",
    "POOLS",
    "Annotator",
    "Choice",
    "Country",
    "GoldScorer",
    "KnowledgeBase",
    "Persona",
    "Pool",
    "Question",
    "World",
    "WorldConfig",
    "build_world",
    "format_prompt",
    "label_pairs",
    "label_rankings",
    "label_ratings",
    "load_world",
    "make_annotators",
    "normalize",
    "question_text",
    "split_prompts",
    "split_sentences",
    "write_world",
]
