"""The feedback stage of `prefloop loop` through the feedback web app (`--feedback app`).

One pairwise project per round (named after the loop's output directory and the round, so a resumed loop
finds its project again instead of importing twice): the round's pairs are imported through the REST API,
people annotate them in the browser (the loop waits, polling the project's progress, until every item has
`--overlap` judgments), and the export, in the comparison contract the reward trainer reads, becomes the
round's feedback. With `--simulate`, the world's simulated annotators act as the app's users: each gets an
account in its pool and an API token, and they take turns fetching and judging assignments through the same
API that people's pages use (blind, in the randomised display order the app chose for them).
"""

from __future__ import annotations

import json
import random
import secrets
import time

from prefloop.runtime import console

from .common import ConfigError

IMPORT_CHUNK = 500
POLL_SECONDS = 30.0


def project_name(cfg, rnd: int) -> str:
    return f"loop {cfg.out.resolve().name} round {rnd}"


def _client(url: str, token: str):
    try:
        from prefloop.feedback.client import FeedbackClient
    except ImportError as e:  # the app extra is not installed
        raise ConfigError(f"--feedback app needs the app extra (pip install 'prefloop[app]'): {e}") from None
    return FeedbackClient(url, token)


def ensure_project(admin, cfg, rnd: int, items: list[dict]) -> int:
    """The round's project id; creates it and imports the round's pairs when it does not exist yet."""
    name = project_name(cfg, rnd)
    for p in admin.projects():
        if p["name"] == name:
            return int(p["id"])
    guidelines = ("Two assistant replies to the same request. Choose the better one: correct, helpful, "
                  "harmless, polite and concise. Refuse-worthy requests should be refused; others answered.")
    p = admin._request("POST", "/api/projects", json={"name": name, "task_type": "pairwise",
                                                      "guidelines": guidelines, "overlap": cfg.overlap}).json()
    # The items are the round's selected pairs (recipes/loop_select.py): people see only those. Their meta
    # (the writer of each reply in `policies`, what the selection saw) comes back in the export.
    rows = [{"id": f"r{rnd}-{i}", "prompt": it["prompt"], "responses": it["responses"],
             "meta": {**it.get("meta", {}), "round": rnd}}
            for i, it in enumerate(items) if len({r.strip() for r in it["responses"]}) == 2
            and all(r.strip() and "\x00" not in r for r in it["responses"])]  # the app refuses NUL in text
    for s in range(0, len(rows), IMPORT_CHUNK):
        admin.import_items(p["id"], rows[s:s + IMPORT_CHUNK])
    return int(p["id"])


def simulated_users(admin, world, pid: int) -> list[tuple[object, str]]:
    """(annotator, API token) for each of the world's simulated annotators, as members of the project."""
    existing = {u["username"] for u in admin._request("GET", "/api/users").json()}
    out = []
    for ann in world.annotators:
        name = f"sim-{ann.id}"
        if name not in existing:
            admin._request("POST", "/api/users", json={"username": name, "password": secrets.token_urlsafe(24),
                                                      "role": "annotator", "pool": ann.pool})
        admin._request("POST", f"/api/projects/{pid}/members", json={"username": name})
        token = admin._request("POST", f"/api/users/{name}/tokens", json={"name": "prefloop loop --simulate"})
        out.append((ann, token.json()["token"]))
    return out


def simulate_round(cfg, token: str, world, pid: int, seed: int) -> int:
    """Simulated annotators take turns (seeded order), one assignment per turn, until none is left."""
    from prefloop.feedback.client import judge

    admin = _client(cfg.app_url, token)
    try:
        users = simulated_users(admin, world, pid)
    finally:
        admin.close()
    clients = [(ann, _client(cfg.app_url, tok)) for ann, tok in users]
    rng = random.Random(f"simulate-{seed}")
    active, n = list(range(len(clients))), 0
    try:
        while active:
            k = rng.choice(active)
            ann, client = clients[k]
            view = client.next(pid)
            if view is None:
                active.remove(k)
                continue
            t0 = time.monotonic()
            value = judge(view, ann)
            client.submit(view["assignment_id"], value, duration_ms=int(1000 * (time.monotonic() - t0)))
            n += 1
    finally:
        for _, c in clients:
            c.close()
    return n


def wait_until_complete(admin, pid: int, poll: float = POLL_SECONDS) -> dict:
    """Poll the project's progress until every item has its overlap of judgments."""
    while True:
        progress = admin._request("GET", f"/api/projects/{pid}/stats").json()["progress"]
        if progress["complete_items"] >= progress["items"]:
            return progress
        console.print(f"waiting for feedback: {progress['complete_items']}/{progress['items']} items complete "
                      f"({progress['judgments']} judgments)")
        time.sleep(poll)


def app_feedback(cfg, token: str, world, items: list[dict], rnd: int, seed: int,
                 poll: float = POLL_SECONDS) -> list[dict]:
    """The round's comparison records, collected through the feedback app (`token`: an admin's API token)."""
    admin = _client(cfg.app_url, token)
    try:
        pid = ensure_project(admin, cfg, rnd, items)
        if cfg.simulate:
            n = simulate_round(cfg, token, world, pid, seed)
            console.print(f"simulated annotators submitted {n} judgments to project {pid}")
        wait_until_complete(admin, pid, poll)
        text = admin.export(pid, kind="comparisons", ties="drop")
    finally:
        admin.close()
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    # The gold judge is the world's, not the app's: record what it thinks of each pair for evaluation only.
    for r in records:
        meta = r.setdefault("meta", {}) or {}
        r["meta"] = meta
        meta["gold_chosen"] = world.gold.score(r["prompt"], r["chosen"])
        meta["gold_rejected"] = world.gold.score(r["prompt"], r["rejected"])
    return records
