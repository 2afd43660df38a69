"""The feedback stage of `prefloop loop` through the feedback web app (`--feedback app`).

One pairwise project per round (named after the loop's output directory and the round, so a resumed loop
finds its project again instead of importing twice): the round's pairs are imported through the REST API,
people annotate them in the browser (the loop waits, polling the project's progress, until every item has
`--overlap` judgments), and the export, in the comparison contract the reward trainer reads, becomes the
round's feedback. With `--simulate`, the world's simulated annotators act as the app's users: each gets an
account in its pool and an API token, and they take turns fetching and judging assignments through the same
API that people's pages use (blind, in the randomised display order the app chose for them).

With `--gold-checks N` the round's project also holds N gold items (pairs with a known answer, the world's gold
judge deciding) that the app mixes into assignments at the rate `--app-gold-rate`; after the export each label
carries its annotator's agreement as the app's dashboard computes it (with gold items where the annotator
judged enough of them, else with the peers who judged the same items), which `--min-annotator-agreement`
screens on.

With `--app-refill-below N` the pairs go in a portion at a time (`--app-refill-portion`), most useful first,
whenever fewer than N items are left to hand out, so people never find the queue empty while the round's
budget is still being imported; the round still ends when every imported pair has its judgments.
"""

from __future__ import annotations

import json
import random
import secrets
import time

from prefloop.errors import ConfigError
from prefloop.runtime import console

IMPORT_CHUNK = 500
POLL_SECONDS = 30.0
MIN_GOLD_JUDGED = 5  # fewer gold items than this measure an annotator too coarsely: use peer agreement


def project_name(cfg, rnd: int) -> str:
    return f"loop {cfg.out.resolve().name} round {rnd}"


def _client(url: str, token: str):
    try:
        from prefloop.feedback.client import FeedbackClient
    except ImportError as e:  # the app extra is not installed
        raise ConfigError(f"--feedback app needs the app extra (pip install 'prefloop[app]'): {e}") from None
    return FeedbackClient(url, token)


def app_rows(items: list[dict], rnd: int) -> list[dict]:
    """The import lines of the round's selected pairs (recipes/loop_select.py), most useful first (the order
    refilling imports them in; a stable sort, so a random selection keeps its order). Their meta (the writer
    of each reply in `policies`, what the selection saw) comes back in the export."""
    rows = [{"id": f"r{rnd}-{i}", "prompt": it["prompt"], "responses": it["responses"],
             "meta": {**it.get("meta", {}), "round": rnd}}
            for i, it in enumerate(items) if len({r.strip() for r in it["responses"]}) == 2
            and all(r.strip() and "\x00" not in r for r in it["responses"])]  # the app refuses NUL in text
    return sorted(rows, key=lambda r: -float(r["meta"].get("selection", {}).get("usefulness", 0.0)))


def gold_rows(world, n: int, rnd: int, seed: int) -> list[dict]:
    """n gold items of the round: the world's gold-check pairs, the better reply at a seeded random side."""
    rng = random.Random(f"app-gold-{seed}")
    rows = []
    for i, (prompt, better, worse) in enumerate(world.gold_checks(n, seed=seed)):
        flip = rng.random() < 0.5
        rows.append({"id": f"r{rnd}-gold-{i}", "prompt": prompt, "responses": [worse, better] if flip else
                     [better, worse], "gold": {"preferred": 1 if flip else 0}, "meta": {"round": rnd}})
    return rows


def annotator_agreement(rows: list[dict], min_gold: int = MIN_GOLD_JUDGED) -> dict[str, tuple[float, str]]:
    """{annotator: (agreement, "gold" | "peers")} from the rows of the app's project statistics: agreement
    with gold items where the annotator judged at least `min_gold` of them, else with the peers' answers to the
    same items; annotators with neither are left out (their labels are kept)."""
    out = {}
    for r in rows:
        if r.get("gold_agreement") is not None and r.get("gold_judged", 0) >= min_gold:
            out[r["annotator"]] = (float(r["gold_agreement"]), "gold")
        elif r.get("peer_agreement") is not None:
            out[r["annotator"]] = (float(r["peer_agreement"]), "peers")
    return out


def import_rows(admin, pid: int, rows: list[dict]) -> None:
    for s in range(0, len(rows), IMPORT_CHUNK):
        admin.import_items(pid, rows[s:s + IMPORT_CHUNK])


def ensure_project(admin, cfg, rnd: int, rows: list[dict], first: int | None = None,
                   gold: list[dict] | None = None) -> tuple[int, int]:
    """(project id, how many of `rows` it holds): creates the round's project and imports the first `first`
    rows (all by default) when it does not exist yet. Rows go in in order and in whole requests, so a resumed
    round's project holds a prefix of them, as many as its items."""
    name = project_name(cfg, rnd)
    for p in admin.projects():
        if p["name"] == name:
            return int(p["id"]), _progress(admin, int(p["id"]))["items"]
    guidelines = ("Two assistant replies to the same request. Choose the better one: correct, helpful, "
                  "harmless, polite and concise. Refuse-worthy requests should be refused; others answered.")
    gold_rate = cfg.app_gold_rate if cfg.gold_checks > 0 else 0.0
    p = admin._request("POST", "/api/projects", json={"name": name, "task_type": "pairwise", "guidelines": guidelines,
                                                      "overlap": cfg.overlap, "gold_rate": gold_rate}).json()
    if gold:
        import_rows(admin, int(p["id"]), gold)  # before the pairs: a resumed round finds its prefix of them
    head = rows if first is None else rows[:first]
    import_rows(admin, int(p["id"]), head)
    return int(p["id"]), len(head)


def _progress(admin, pid: int) -> dict:
    return admin._request("GET", f"/api/projects/{pid}/stats").json()["progress"]


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


class SimulatedTeam:
    """The world's simulated annotators as the app's users, taking turns (seeded order), one assignment per
    turn."""

    def __init__(self, cfg, token: str, world, pid: int, seed: int):
        admin = _client(cfg.app_url, token)
        try:
            users = simulated_users(admin, world, pid)
        finally:
            admin.close()
        self.pid = pid
        self.clients = [(ann, _client(cfg.app_url, tok)) for ann, tok in users]
        self.rng = random.Random(f"simulate-{seed}")

    def work(self, max_judgments: int | None = None) -> int:
        """Judge until no annotator gets an assignment (or after `max_judgments`); returns how many judged."""
        from prefloop.feedback.client import judge

        active, n = list(range(len(self.clients))), 0
        while active and (max_judgments is None or n < max_judgments):
            k = self.rng.choice(active)
            ann, client = self.clients[k]
            view = client.next(self.pid)
            if view is None:
                active.remove(k)
                continue
            t0 = time.monotonic()
            value = judge(view, ann)
            client.submit(view["assignment_id"], value, duration_ms=int(1000 * (time.monotonic() - t0)))
            n += 1
        return n

    def close(self) -> None:
        for _, c in self.clients:
            c.close()


def refill(admin, cfg, pid: int, rows: list[dict], done: int, team: SimulatedTeam | None = None,
           poll: float = POLL_SECONDS) -> None:
    """Import `rows[done:]` a portion at a time, each when fewer than --app-refill-below items are left to
    hand out, until all are in. People work between polls; simulated annotators (`team`) work in bursts of
    N - 1 judgments, each taking at most one item off the queue, so N or more items before a burst leave at
    least one after it: like people, they never find the queue empty while pairs are still to come. A team
    that finds nothing it may take (items it has judged already) is idle, which also calls for more."""
    while done < len(rows):
        idle = False
        if team is not None:
            idle = team.work(max(1, cfg.app_refill_below - 1)) == 0
        available = _progress(admin, pid)["available_items"]
        if idle or available < cfg.app_refill_below:
            portion = rows[done:done + cfg.app_refill_portion]
            import_rows(admin, pid, portion)
            done += len(portion)
            console.print(f"{available} items left to hand out: imported {len(portion)} more pairs "
                          f"({done}/{len(rows)}) into project {pid}")
        elif team is None:
            time.sleep(poll)


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
    rows = app_rows(items, rnd)
    refilling = cfg.app_refill_below > 0
    team = None
    try:
        gold = gold_rows(world, cfg.gold_checks, rnd, cfg.seed + 31 * rnd) if cfg.gold_checks > 0 else None
        pid, done = ensure_project(admin, cfg, rnd, rows, cfg.app_refill_portion if refilling else None, gold)
        if cfg.simulate:
            team = SimulatedTeam(cfg, token, world, pid, seed)
        if refilling:
            refill(admin, cfg, pid, rows, done, team, poll)
        if team is not None:
            console.print(f"simulated annotators submitted {team.work()} judgments to project {pid}")
        wait_until_complete(admin, pid, poll)
        text = admin.export(pid, kind="comparisons", ties="drop")
        agreement = annotator_agreement(admin._request("GET", f"/api/projects/{pid}/stats").json()["annotators"])
    finally:
        if team is not None:
            team.close()
        admin.close()
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    # The gold judge is the world's, not the app's: record what it thinks of each pair for evaluation only.
    for r in records:
        meta = r.setdefault("meta", {}) or {}
        r["meta"] = meta
        meta["gold_chosen"] = world.gold.score(r["prompt"], r["chosen"])
        meta["gold_rejected"] = world.gold.score(r["prompt"], r["rejected"])
        if r.get("annotator") in agreement:  # what --min-annotator-agreement screens on
            meta["annotator_agreement"], meta["agreement_with"] = agreement[r["annotator"]]
    return records
