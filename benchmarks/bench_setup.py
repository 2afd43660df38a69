"""Everything both frameworks share: the data, the tokenizer and the initial weights.

HH-RLHF harmless-base pairs become three JSONL files (the prompt is the dialogue up to and including the
last "\\n\\nAssistant:", chosen/rejected are the final replies):
  sft.jsonl      {"prompt", "completion"}            prompt + chosen reply
  pairs.jsonl    {"prompt", "chosen", "rejected"}
  prompts.jsonl  {"prompt"}                          for RL, prompts of at most max_length - new tokens
Only pairs whose prompt + longer reply + EOS fit in max_length are kept, so neither framework truncates
anything and both see exactly the same token sequences (their truncation rules differ: TRL cuts the end,
prefloop the start of the prompt).

Models are built from a GPT-2 config with a fixed seed and saved once: `lm/` (causal LM + tokenizer) and
`rm/` (the same trunk as a sequence classifier with a prefloop-initialised score head). Both frameworks
load these directories.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

HH_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
ASSISTANT = "\n\nAssistant:"
VOCAB = 8192


class DataMissing(RuntimeError):
    """The shared data folder is absent: the benchmark skips with this message."""


def read_hh(path: Path = HH_FILE) -> tuple[list[dict], int]:
    """(pairs as {"prompt", "chosen", "rejected"}, number of rows skipped)."""
    if not path.exists():
        raise DataMissing(f"{path} not found: the benchmarks need the HH-RLHF files in hh-rlhf/ of the data directory")
    pairs, skipped = [], 0
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            chosen, rejected = row["chosen"], row["rejected"]
            cut = chosen.rfind(ASSISTANT) + len(ASSISTANT)
            prompt = chosen[:cut]
            if cut < len(ASSISTANT) or not rejected.startswith(prompt):
                skipped += 1  # the two dialogues do not share everything up to the final assistant turn
                continue
            c, r = chosen[cut:], rejected[cut:]
            if not c.strip() or not r.strip():
                skipped += 1
                continue
            pairs.append({"prompt": prompt, "chosen": c, "rejected": r})
    return pairs, skipped


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _fits(tok, pairs: list[dict], max_length: int) -> tuple[list[dict], list[int]]:
    """Pairs whose prompt + longer reply + EOS fit, and the prompt lengths in tokens of those kept."""
    from prefloop.data import encode_completion, encode_prompt

    kept, prompt_lens = [], []
    for p in pairs:
        n_p = len(encode_prompt(tok, p["prompt"]))
        n_r = max(len(encode_completion(tok, p["chosen"])), len(encode_completion(tok, p["rejected"])))
        if n_p + n_r <= max_length:
            kept.append(p)
            prompt_lens.append(n_p)
    return kept, prompt_lens


def _matmul_params(model, head) -> int:
    """Weights that multiply activations: the 2-D weights of the blocks plus the output head.
    Embedding lookups (token and position) cost no matmul and are left out."""
    body = sum(p.numel() for n, p in model.transformer.h.named_parameters() if p.dim() == 2)
    return body + head.weight.numel()


def prepare(out: Path, size: str, max_length: int, new_tokens: int, seed: int = 0) -> dict:
    """Write data, tokenizer and models under `out` (reused when already there); returns the summary."""
    stamp = out / "setup.json"
    want = {"size": size, "max_length": max_length, "new_tokens": new_tokens, "seed": seed, "vocab": VOCAB,
            "version": 2}
    if stamp.exists():
        info = json.loads(stamp.read_text())
        if info.get("config") == want:
            return info

    import torch
    from transformers import AutoModelForSequenceClassification

    from prefloop.models import init_score_head
    from prefloop.recipes.pretrain import new_model, train_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    pairs, skipped = read_hh()
    texts = [p["prompt"] + p["chosen"] for p in pairs] + [p["prompt"] + p["rejected"] for p in pairs]
    tok = train_tokenizer(texts, VOCAB)
    kept, prompt_lens = _fits(tok, pairs, max_length)
    random.Random(seed).shuffle(kept)  # the file order is not used for batching, but keep it neutral

    _write_jsonl(out / "sft.jsonl", [{"prompt": p["prompt"], "completion": p["chosen"]} for p in kept])
    _write_jsonl(out / "pairs.jsonl", kept)
    _, prompt_lens = _fits(tok, kept, max_length)
    rl_prompts = [p["prompt"] for p, n in zip(kept, prompt_lens) if n <= max_length - new_tokens]
    _write_jsonl(out / "prompts.jsonl", [{"prompt": p} for p in rl_prompts])

    torch.manual_seed(seed)
    lm = new_model(tok, "gpt2", size, max(512, max_length))
    lm.save_pretrained(out / "lm")
    tok.save_pretrained(out / "lm")
    rm = AutoModelForSequenceClassification.from_pretrained(out / "lm", num_labels=1)
    rm.config.pad_token_id = tok.pad_token_id
    torch.manual_seed(seed + 1)
    init_score_head(rm)
    rm.save_pretrained(out / "rm")
    tok.save_pretrained(out / "rm")

    info = {
        "config": want,
        "rows": len(pairs) + skipped, "skipped_no_shared_prefix": skipped, "pairs_fitting": len(kept),
        "rl_prompts": len(rl_prompts),
        "mean_prompt_tokens_rl": sum(n for n in prompt_lens if n <= max_length - new_tokens) / max(1, len(rl_prompts)),
        "vocab": len(tok),
        "params_lm_total": sum(p.numel() for p in lm.parameters()),
        "matmul_params_lm": _matmul_params(lm, lm.lm_head),
        "matmul_params_rm": _matmul_params(rm, rm.score),
    }
    stamp.write_text(json.dumps(info, indent=1))
    return info
