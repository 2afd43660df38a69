"""Human evaluation end to end against a real server: `prefloop eval human-project` builds a blind pairwise project
from two policies' samples, the world's simulated annotators judge it through the REST API, and
`prefloop eval --judge-file` turns the export into a win rate with its interval."""

from __future__ import annotations

import json
import random
import secrets

from prefloop.eval.cli import main as eval_main

from .conftest import make_project

VIEW_KEYS = {"assignment_id", "project_id", "task_type", "prompt", "responses", "done"}


def write_samples(path, world, prompts, persona: str, k: int, seed: int):
    rng = random.Random(f"{persona}-{seed}")
    rows = [{"prompt": p, "responses": [world.persona_response(p, persona, rng) for _ in range(k)],
             "ended": [True] * k} for p in prompts]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def sim_users(server, n: int, prefix: str) -> dict[str, str]:
    """n annotator accounts in the standard pool; returns {username: API token}."""
    out = {}
    with server.client("admin") as c:
        for i in range(n):
            name = f"{prefix}{i}"
            r = c.post("/api/users", json={"username": name, "password": secrets.token_urlsafe(16),
                                           "role": "annotator", "pool": "standard"})
            assert r.status_code == 201, r.text
            out[name] = c.post(f"/api/users/{name}/tokens", json={"name": "test"}).json()["token"]
    return out


def test_blind_project_from_two_policies_and_win_rate_from_its_export(server, tmp_path, monkeypatch, capsys):
    from prefloop.feedback.client import FeedbackClient, simulate
    from prefloop.world import WorldConfig, build_world, make_annotators

    world = build_world(WorldConfig.preset("tiny", seed=0))
    prompts = world.heldout_prompts[:16]
    good = write_samples(tmp_path / "good.jsonl", world, prompts, "demonstrator", 2, 0)
    weak = write_samples(tmp_path / "weak.jsonl", world, prompts, "rambler", 2, 0)
    gold = {n: sum(world.gold.score(r["prompt"], x) for r in rows for x in r["responses"]) / 32
            for n, rows in (("pol-a7", good), ("ref-b3", weak))}
    assert gold["pol-a7"] > gold["ref-b3"] + 1.0  # the premise: the world's gold judge prefers "pol-a7"

    users = sim_users(server, 4, "he-sim-")
    rc = eval_main(["human-project", "--policy-samples", str(tmp_path / "good.jsonl"), "--reference-samples",
                    str(tmp_path / "weak.jsonl"), "--name", "pol-a7", "--reference-name", "ref-b3",
                    "--url", server.url, "--token", server.tokens["admin"], "--project", "human eval good-weak",
                    "--overlap", "2", "--per-prompt", "2", "--items-out", str(tmp_path / "items.jsonl"),
                    "--members", *users])
    assert rc == 0
    items = [json.loads(x) for x in (tmp_path / "items.jsonl").read_text().splitlines()]
    distinct = sum(a.strip() != b.strip() for r, s in zip(good, weak) for a, b in zip(r["responses"], s["responses"]))
    assert len(items) == distinct > 20
    firsts = [it["meta"]["policies"][0] for it in items]
    assert 0 < firsts.count("pol-a7") < len(items)  # the stored order is shuffled too

    with server.client("admin") as c:
        pid = next(p["id"] for p in c.get("/api/projects").json() if p["name"] == "human eval good-weak")
    anns = make_annotators(4, {"standard": 1.0}, seed=0, gold=world.gold)
    clients = {u: FeedbackClient(server.url, tok) for u, tok in users.items()}
    try:
        # Blind: an annotator sees the prompt and two responses, no item id, meta or policy name.
        view = clients["he-sim-0"].next(pid)
        assert set(view) == VIEW_KEYS and "pol-a7" not in json.dumps(view) and "ref-b3" not in json.dumps(view)
        n = sum(simulate(cl, pid, a) for cl, a in zip(clients.values(), anns))
    finally:
        for cl in clients.values():
            cl.close()
    assert n == 2 * len(items)

    admin = FeedbackClient(server.url, server.tokens["admin"])
    try:
        export = admin.export(pid, ties="keep")
    finally:
        admin.close()
    (tmp_path / "export.jsonl").write_text(export)
    recs = [json.loads(x) for x in export.splitlines()]
    assert len(recs) == n
    writers = {(r["prompt"], x): name for name, rows in (("pol-a7", good), ("ref-b3", weak))
               for r in rows for x in r["responses"]}
    for r in recs:
        m = r["meta"]
        assert {m["chosen_policy"], m["rejected_policy"]} == {"pol-a7", "ref-b3"}
        assert writers[(r["prompt"], r["chosen"])] == m["chosen_policy"]  # attribution follows the text
        assert writers[(r["prompt"], r["rejected"])] == m["rejected_policy"]
        assert m["item_meta"]["policies"] in (["pol-a7", "ref-b3"], ["ref-b3", "pol-a7"])

    assert eval_main(["--judge-file", str(tmp_path / "export.jsonl"), "--name", "pol-a7", "--reference-name", "ref-b3",
                      "--out", str(tmp_path / "eval")]) == 0
    wr = json.loads((tmp_path / "eval" / "metrics.json").read_text())["win_rates"]["pol-a7 vs ref-b3"]
    assert wr["n"] == n and wr["skipped"] == 0
    assert 0.5 < wr["ci_low"] < wr["win_rate"] < wr["ci_high"]
    assert eval_main(["--judge-file", str(tmp_path / "export.jsonl"), "--name", "ref-b3", "--reference-name", "pol-a7",
                      "--out", str(tmp_path / "eval-rev")]) == 0
    rev = json.loads((tmp_path / "eval-rev" / "metrics.json").read_text())["win_rates"]["ref-b3 vs pol-a7"]
    assert abs(rev["win_rate"] - (1 - wr["win_rate"])) < 1e-9 and rev["ci_high"] < 0.5

    # The same project name again is refused before anything is imported (the token from the environment).
    monkeypatch.setenv("PREFLOOP_APP_TOKEN", server.tokens["admin"])
    capsys.readouterr()
    rc = eval_main(["human-project", "--policy-samples", str(tmp_path / "good.jsonl"), "--reference-samples",
                    str(tmp_path / "weak.jsonl"), "--name", "pol-a7", "--reference-name", "ref-b3",
                    "--url", server.url, "--project", "human eval good-weak"])
    assert rc == 2 and "already exists" in capsys.readouterr().err


def test_export_attributes_sides_only_from_item_policies(server):
    items = [{"id": "a", "prompt": "p?", "responses": ["one", "two"], "meta": {"policies": ["x", "y"], "k": 1}},
             {"id": "b", "prompt": "q?", "responses": ["three", "four"]}]
    pid = make_project(server, "policies export", "pairwise", items, members=["ann1"])
    with server.client("ann1") as c:
        while (view := c.post(f"/api/projects/{pid}/next").json()["assignment"]) is not None:
            choice = view["responses"].index("two" if "two" in view["responses"] else "four")
            r = c.post(f"/api/assignments/{view['assignment_id']}/judgment",
                       json={"submission_id": secrets.token_hex(8), "value": {"choice": choice, "strength": 2}})
            assert r.status_code == 200, r.text
    with server.client("admin") as c:
        recs = {json.loads(x)["meta"]["item"]: json.loads(x)
                for x in c.get(f"/api/projects/{pid}/export").text.splitlines()}
        bad = c.post(f"/api/projects/{pid}/items",
                     json={"items": [{"id": "c", "prompt": "r?", "responses": ["5", "6"],
                                      "meta": {"policies": ["x"]}}]})
    a, b = recs["a"], recs["b"]
    assert (a["chosen"], a["meta"]["chosen_policy"], a["meta"]["rejected_policy"]) == ("two", "y", "x")
    assert a["meta"]["item_meta"] == {"policies": ["x", "y"], "k": 1}
    assert "chosen_policy" not in b["meta"] and "item_meta" not in b["meta"]
    assert bad.status_code in (400, 422) and "meta.policies" in bad.text
