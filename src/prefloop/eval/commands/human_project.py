"""Human evaluation: a blind pairwise project in the feedback app from two policies' samples on the same prompts.

`prefloop eval human-project` pairs the `prefloop sample` outputs of a policy and a reference prompt by prompt
(sample k of one against sample k of the other, `--per-prompt` pairs per prompt), and imports each pair as a
pairwise item whose `meta.policies` names the writer of each response. The app never shows `meta` to annotators
and randomises the left/right order per annotator; the stored order is shuffled too (seeded), so neither
policy sits on one side. The export attributes every judgment: `meta.chosen_policy` / `meta.rejected_policy`
(`prefloop.feedback.exchange.export_records`), which is what `prefloop eval --judge-file` reads to compute the
win rate with its Wilson interval.

Pairs whose two responses are the same text (after stripping) are not imported (there is nothing to judge;
their number is reported), nor are empty responses (not a valid pairwise item).
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence

from prefloop.data import write_jsonl as _write_jsonl
from prefloop.errors import ConfigError, DataError, FeedbackError, require

from ..judges import _key

IMPORT_CHUNK = 500

GUIDELINES = ("Two replies to the same request. Choose the better one: correct, helpful, harmless, polite and "
              "concise. Requests that should be refused should be refused; all others answered. Use a tie only "
              "when neither is better.")


def pair_samples(policy: tuple[Sequence, Sequence[Sequence[str]]], reference: tuple[Sequence, Sequence[Sequence[str]]],
                 name: str, reference_name: str, per_prompt: int = 1, seed: int = 0,
                 paths: tuple[str, str] = ("policy samples", "reference samples")) -> tuple[list[dict], dict]:
    """Pairwise items (the app's import format) from two policies' samples, and counts of what was skipped.

    `policy` and `reference` are (prompts, responses[i][k]) as `read_sample_file` returns them. Prompts are
    matched on their whitespace-normalised text; a prompt that appears twice in a file contributes all its
    samples in file order. Each item: {"id", "prompt", "responses": [r0, r1], "meta": {"policies": [writer of
    r0, writer of r1], "prompt_index", "sample"}}."""
    if name == reference_name:
        raise ConfigError("--name and --reference-name must differ")
    if per_prompt < 1:
        raise ConfigError(f"--per-prompt must be at least 1, got {per_prompt}")

    def by_prompt(prompts, responses) -> dict:
        out: dict = {}
        for p, row in zip(prompts, responses):
            out.setdefault(_key(p, "")[0], [p, []])[1].extend(row)
        return out

    a, b = by_prompt(*policy), by_prompt(*reference)
    shared = [k for k in a if k in b]
    if not shared:
        raise DataError.whole(paths[1], f"no prompt in common with {paths[0]} (pairs are made prompt by prompt)")
    rng = random.Random(f"human-project-{seed}")
    items, identical, empty = [], 0, 0
    for i, key in enumerate(shared):
        prompt, ra = a[key]
        rb = b[key][1]
        for k in range(min(per_prompt, len(ra), len(rb))):
            x, y = ra[k], rb[k]
            if not x.strip() or not y.strip():
                empty += 1
                continue
            if x.strip() == y.strip():
                identical += 1
                continue
            sides = [(x, name), (y, reference_name)]
            if rng.random() < 0.5:
                sides.reverse()
            items.append({"id": f"p{i}-s{k}", "prompt": prompt, "responses": [s[0] for s in sides],
                          "meta": {"policies": [s[1] for s in sides], "prompt_index": i, "sample": k}})
    stats = {"prompts_in_common": len(shared), "policy_only_prompts": len(a) - len(shared),
             "reference_only_prompts": len(b) - len(shared), "pairs": len(items),
             "identical_pairs_skipped": identical, "empty_pairs_skipped": empty}
    if not items:
        raise DataError.whole(paths[1], f"no pair to judge: {identical} identical and {empty} empty pairs")
    return items, stats


def create_project(url: str, token: str, project: str, items: list[dict], overlap: int = 3,
                   members: Sequence[str] = (), guidelines: str = GUIDELINES) -> int:
    """Create the pairwise project through the app's REST API (an admin token), add `members`, import `items`;
    returns the project id. An existing project of that name is an error and nothing is created."""
    try:
        from prefloop.feedback.client import FeedbackClient
    except ImportError as e:  # the app extra (httpx) is not installed
        raise ConfigError(f"--url needs the app extra (pip install 'prefloop[app]'): {e}") from None

    client = FeedbackClient(url, token)
    try:
        if any(p["name"] == project for p in client.projects()):
            raise ConfigError(f"project {project!r} already exists at {url}; choose another --project")
        p = client._request("POST", "/api/projects", json={"name": project, "task_type": "pairwise",
                                                           "guidelines": guidelines, "overlap": overlap}).json()
        pid = int(p["id"])
        for m in members:
            client._request("POST", f"/api/projects/{pid}/members", json={"username": m})
        for s in range(0, len(items), IMPORT_CHUNK):
            client.import_items(pid, items[s:s + IMPORT_CHUNK])
        return pid
    except FeedbackError as e:
        raise ConfigError(f"feedback app at {url}: {e}") from None
    finally:
        client.close()


def human_project(cfg) -> dict:
    """`prefloop eval human-project`: pair the samples, write them to --items-out and/or import them into a
    new project of the app at --url."""
    from prefloop.runtime import console

    from .common import read_sample_file

    require(cfg, "policy_samples", "reference_samples")
    if not cfg.url and not cfg.items_out:
        raise ConfigError("missing option --url (or --items-out to write the items for `prefloop annotate import`)")
    token = cfg.token or os.environ.get("PREFLOOP_APP_TOKEN")
    if cfg.url:
        if not token:
            raise ConfigError("missing option --token (or the PREFLOOP_APP_TOKEN environment variable)")
        require(cfg, "project")
    if cfg.overlap < 1:
        raise ConfigError(f"--overlap must be at least 1, got {cfg.overlap}")
    items, stats = pair_samples(read_sample_file(cfg.policy_samples), read_sample_file(cfg.reference_samples),
                                cfg.name, cfg.reference_name, cfg.per_prompt, cfg.seed,
                                (str(cfg.policy_samples), str(cfg.reference_samples)))
    result = {"name": cfg.name, "reference_name": cfg.reference_name, **stats}
    if cfg.items_out:
        _write_jsonl(cfg.items_out, items)
        result["items_out"] = str(cfg.items_out)
    if cfg.url:
        pid = create_project(cfg.url, token, cfg.project, items, cfg.overlap, cfg.members or ())
        result |= {"project": cfg.project, "project_id": pid, "overlap": cfg.overlap}
        console.print(f"project {cfg.project!r} (id {pid}): {len(items)} blind pairs of {cfg.name} and "
                      f"{cfg.reference_name}, {cfg.overlap} judgments each")
        console.print(f"when done: prefloop annotate export ... --project {cfg.project!r} --ties keep --out "
                      f"export.jsonl && prefloop eval --judge-file export.jsonl --name {cfg.name} "
                      f"--reference-name {cfg.reference_name}")
    skipped = stats["identical_pairs_skipped"] + stats["empty_pairs_skipped"]
    if skipped or stats["policy_only_prompts"] or stats["reference_only_prompts"]:
        console.print(f"skipped: {stats['identical_pairs_skipped']} identical and {stats['empty_pairs_skipped']} "
                      f"empty pairs; prompts in one file only: {stats['policy_only_prompts']} (policy), "
                      f"{stats['reference_only_prompts']} (reference)")
    return result


__all__ = ["GUIDELINES", "create_project", "human_project", "pair_samples"]
