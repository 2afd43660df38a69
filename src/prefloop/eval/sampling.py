"""The evaluation's sampler: K samples per prompt, scored by judges, with KL to a reference measured on them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from prefloop.data import encode_prompt, left_pad
from prefloop.models import sequence_scores
from prefloop.rl import kl_k3
from prefloop.rollout import LocalEngine, SamplingConfig, response_logprobs
from prefloop.runtime.distributed import gather_shares, my_share, rank_and_world
from prefloop.runtime.seeding import process_seed

from .diversity import distinct_n, per_input_self_bleu


@dataclass
class PolicySamples:
    """K samples for each of N prompts and what was measured on them (lists are [N][K])."""

    prompts: list[str]
    responses: list[list[str]]
    ended: list[list[bool]]
    lengths: list[list[int]]
    kl_k1: list[list[float]] = field(default_factory=list)
    kl_k3: list[list[float]] = field(default_factory=list)
    reward_model: list[list[float]] = field(default_factory=list)
    entropy: list[list[float]] = field(default_factory=list)  # mean per-token entropy of the policy (nats)

    def flat(self, name: str) -> list:
        return [x for row in getattr(self, name) for x in row]


@torch.no_grad()
def sample_policy(policy, tok, prompt_texts: list[str], k: int, scfg: SamplingConfig, *, reference=None,
                  reward_model=None, batch_size: int = 64, seed: int = 0, max_prompt: int = 192,
                  device="cpu", entropy: bool = False) -> PolicySamples:
    """Sample K completions per prompt; with a reference, the per-sequence KL(policy || reference)
    estimated on the samples (k1 = sum of log-ratios, k3 = its non-negative estimator, docs/EVALUATION.md);
    with a reward model, its score of each sample; with `entropy`, the mean entropy of the policy's
    tempered next-token distribution over each sample's tokens (one more forward pass).
    In a run of several processes each samples its share of the prompts with its own random stream, and
    every process returns the samples of all prompts in order."""
    rank, world = rank_and_world()
    mine = _sample_policy(policy, tok, my_share(prompt_texts, rank, world), k, scfg, reference, reward_model,
                          batch_size, process_seed(seed, rank), max_prompt, device, entropy)
    if world == 1:
        return mine
    optional = {"kl_k1": reference is not None, "kl_k3": reference is not None,
                "reward_model": reward_model is not None, "entropy": entropy}
    names = ["responses", "ended", "lengths"] + [n for n, measured in optional.items() if measured]
    rows = gather_shares(list(zip(*(getattr(mine, n) for n in names))), world)
    merged = {n: [r[c] for r in rows] for c, n in enumerate(names)}
    return PolicySamples(prompts=list(prompt_texts), **merged)


@torch.no_grad()
def _sample_policy(policy, tok, prompt_texts: list[str], k: int, scfg: SamplingConfig, reference, reward_model,
                   batch_size: int, seed: int, max_prompt: int, device, entropy: bool) -> PolicySamples:
    policy.eval()
    gen = torch.Generator().manual_seed(seed)
    rows = [(i, j) for i in range(len(prompt_texts)) for j in range(k)]
    enc = [encode_prompt(tok, t)[-max_prompt:] for t in prompt_texts]
    N = len(prompt_texts)
    res = PolicySamples(prompt_texts, [[""] * k for _ in range(N)], [[False] * k for _ in range(N)],
                        [[0] * k for _ in range(N)])
    if reference is not None:
        res.kl_k1, res.kl_k3 = [[0.0] * k for _ in range(N)], [[0.0] * k for _ in range(N)]
    if reward_model is not None:
        res.reward_model = [[0.0] * k for _ in range(N)]
    if entropy:
        res.entropy = [[0.0] * k for _ in range(N)]
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        q, qm = left_pad([enc[i] for i, _ in chunk], tok.pad_token_id)
        out = LocalEngine(policy).generate(q.to(device), qm.to(device), scfg, gen)
        mask = out.response_mask.float()
        if reference is not None:
            ref_lp = response_logprobs(reference, out.query_ids, out.query_mask, out.response_ids,
                                       out.response_mask, scfg.temperature)
            k1 = ((out.logprobs - ref_lp) * mask).sum(1).tolist()
            k3 = (kl_k3(out.logprobs, ref_lp) * mask).sum(1).tolist()
        if reward_model is not None:
            scores = sequence_scores(reward_model, torch.cat([out.query_ids, out.response_ids], 1),
                                     torch.cat([out.query_mask, out.response_mask], 1)).tolist()
        if entropy:
            ent = sequence_entropy(policy, out, scfg.temperature)
        for r, (i, j) in enumerate(chunk):
            toks = out.response_ids[r][out.response_mask[r].bool()].tolist()
            res.responses[i][j] = tok.decode(toks, skip_special_tokens=True)
            res.ended[i][j] = bool(out.ended[r])
            res.lengths[i][j] = len(toks)
            if reference is not None:
                res.kl_k1[i][j], res.kl_k3[i][j] = k1[r], k3[r]
            if reward_model is not None:
                res.reward_model[i][j] = scores[r]
            if entropy:
                res.entropy[i][j] = ent[r]
    return res


def sequence_entropy(policy, out, temperature: float) -> list[float]:
    """Mean per-token entropy H(pi(. | s_t)) over each sampled response (masked), at the sampling temperature:
    the policy-entropy measure of diversity (docs/EVALUATION.md; Kirk et al. 2023)."""
    _, entropy = response_logprobs(policy, out.query_ids, out.query_mask, out.response_ids, out.response_mask,
                                   temperature, entropy=True)
    return masked_mean_rows(entropy, out.response_mask)


def masked_mean_rows(values: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """(B, T) values, (B, T) 0/1 mask -> B means over the masked positions (0 for an empty row)."""
    m = mask.to(values.dtype)
    return ((values * m).sum(1) / m.sum(1).clamp(min=1)).tolist()


def never_end_fraction(ended: list[bool]) -> float:
    """Fraction of responses that hit the token limit without their end token (docs/EVALUATION.md)."""
    return sum(not e for e in ended) / len(ended) if ended else float("nan")


def diversity_metrics(samples: PolicySamples) -> dict[str, float]:
    flat = samples.flat("responses")
    return {"distinct_1": distinct_n(flat, 1), "distinct_2": distinct_n(flat, 2),
            "self_bleu": per_input_self_bleu(samples.responses)}


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")
