"""The sample stage of `prefloop loop`: candidate replies, the pair each prompt offers, and which pairs get
the round's labels (the math is in `prefloop.rl.selection`).

A round samples `--candidates` replies per candidate prompt from the current policy (with `--pairs anchor`
as many from the initial policy too), draws one pair of different replies per prompt, scores the pairs
with the previous round's reward model(s), and keeps the `--select` best within its labelling budget.
Every item records where its replies came from (`meta.policies`, one name per reply, which the feedback
app's export turns into `chosen_policy` / `rejected_policy`) and what the selection saw (`meta.selection`).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch

from prefloop.rl.selection import draw_anchor_pair, draw_pair, select_top, usefulness


def _device() -> str:
    # Candidates are many (--pool-factor x --candidates per label): sample and score them on a GPU if there is one.
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Candidates:
    """Replies per prompt ([N][K]) and the name of the policy that wrote each."""

    prompts: list[str]
    replies: list[list[str]]
    sources: list[list[str]]


def sample_candidates(policy_dir: str, prompts: list[str], k: int, max_new_tokens: int, temperature: float,
                      seed: int, name: str) -> Candidates:
    from prefloop.eval.sampling import sample_policy
    from prefloop.models import load_causal_lm, load_tokenizer
    from prefloop.rollout import SamplingConfig

    tok = load_tokenizer(policy_dir)
    policy = load_causal_lm(policy_dir, tok).eval().to(_device())
    scfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    s = sample_policy(policy, tok, prompts, k, scfg, seed=seed, device=_device())
    return Candidates(list(prompts), [list(r) for r in s.responses], [[name] * k for _ in prompts])


@torch.no_grad()
def member_scores(rm_spec: str, prompts: list[str], replies: list[list[str]], max_length: int,
                  batch_size: int = 64) -> torch.Tensor:
    """(M, N, K) scores of every reply by each of the M reward models named by `rm_spec`."""
    from prefloop.data import encode_pair, right_pad
    from prefloop.models import load_tokenizer
    from prefloop.models.ensemble import load_reward_scorer, reward_members

    tok = load_tokenizer(reward_members(rm_spec)[0])
    scorer = load_reward_scorer(rm_spec, tok).to(_device())
    flat = [(p, r) for p, rs in zip(prompts, replies) for r in rs]
    rows = [encode_pair(tok, SimpleNamespace(prompt=p, chosen=r, rejected=r), max_length).chosen for p, r in flat]
    out = []
    for i in range(0, len(rows), batch_size):
        ids, mask = right_pad(rows[i:i + batch_size], tok.pad_token_id)
        out.append(scorer.member_scores(ids.to(_device()), mask.to(_device())).float().cpu())
    k = len(replies[0]) if replies else 0
    return torch.cat(out, 1).view(-1, len(prompts), k) if out else torch.zeros(1, 0, k)


def merge(current: Candidates, earlier: Candidates) -> Candidates:
    """Each prompt's replies of `current` followed by those of `earlier` (for --pairs anchor)."""
    return Candidates(current.prompts, [a + b for a, b in zip(current.replies, earlier.replies)],
                      [a + b for a, b in zip(current.sources, earlier.sources)])


def draw_items(cands: Candidates, how: str, scores: torch.Tensor | None, split: int | None = None):
    """One item per prompt whose replies can be compared: (items, margins (M, n_items) or None).
    With `split` (anchor pairs), replies [:split] are the current policy's and [split:] an earlier one's."""
    items, margins = [], []
    mean = scores.mean(0) if scores is not None else None
    for n, prompt in enumerate(cands.prompts):
        replies, sources = cands.replies[n], cands.sources[n]
        if split is not None:
            ij = draw_anchor_pair(replies[:split], replies[split:])
            ij = None if ij is None else (ij[0], split + ij[1])
        else:
            ij = draw_pair(replies, None if mean is None else mean[n].tolist(), how)
        if ij is None:
            continue
        a, b = ij
        items.append({"prompt": prompt, "responses": [replies[a], replies[b]],
                      "meta": {"policies": [sources[a], sources[b]], "candidates": len(replies)}})
        if scores is not None:
            margins.append(scores[:, n, a] - scores[:, n, b])
    return items, (torch.stack(margins, 1) if margins else None)


def select_items(items: list[dict], margins: torch.Tensor | None, how: str, budget: int, seed: int) -> list[dict]:
    """The `budget` items a label would teach most (`how`), in their original order; without margins (no
    reward model yet) a seeded random subset."""
    if margins is None or how == "random":
        m = torch.zeros(1, len(items))
        how = "random"
    else:
        m = margins
    scores = usefulness(m, how)
    keep = select_top(scores, budget, torch.Generator().manual_seed(seed))
    chosen = set(keep)
    for i, it in enumerate(items):
        it["meta"]["selection"] = {"by": how, "selected": i in chosen, "usefulness": round(float(scores[i]), 5),
                                   "rm_margin": round(float(m[:, i].mean()), 5)}
    return [items[i] for i in sorted(keep)]


__all__ = ["Candidates", "draw_items", "merge", "member_scores", "sample_candidates", "select_items"]
