"""`prefloop eval human-project` without a server: pairing two policies' samples prompt by prompt into blind
pairwise items (--items-out), and the one-line errors of bad input."""

from __future__ import annotations

import json

from prefloop.eval.cli import main


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_items_pair_prompt_by_prompt_with_writers_in_meta(tmp_path, capsys):
    a = write(tmp_path / "a.jsonl", [{"prompt": f"q{i}?", "responses": [f"a{i}-0", f"a{i}-1", f"a{i}-2"]}
                                     for i in range(40)] + [{"prompt": "only in a", "responses": ["x"]}])
    b = write(tmp_path / "b.jsonl", [{"prompt": f"q{i}? ", "responses": [f"b{i}-0", "same" if i == 3 else f"b{i}-1"]}
                                     for i in range(40)])
    # the policy's second sample of q3 equals the reference's: nothing to judge, skipped
    rows = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    rows[3]["responses"][1] = "same"
    write(tmp_path / "a.jsonl", rows)
    rc = main(["human-project", "--policy-samples", a, "--reference-samples", b, "--name", "ppo",
               "--reference-name", "sft", "--per-prompt", "2", "--items-out", str(tmp_path / "items.jsonl")])
    assert rc == 0
    items = [json.loads(x) for x in (tmp_path / "items.jsonl").read_text().splitlines()]
    assert len(items) == 40 * 2 - 1  # min(3, 2) samples per prompt; "only in a" has no partner
    assert len({it["id"] for it in items}) == len(items)
    for it in items:
        i, k = it["meta"]["prompt_index"], it["meta"]["sample"]
        by = dict(zip(it["meta"]["policies"], it["responses"]))
        assert by == {"ppo": f"a{i}-{k}", "sft": f"b{i}-{k}"} and it["prompt"] == f"q{i}?"
    firsts = [it["meta"]["policies"][0] for it in items]
    assert 20 <= firsts.count("ppo") <= 59  # seeded shuffle of the stored order: both sides, roughly balanced
    assert "1 identical" in capsys.readouterr().err.replace("\n", " ")


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PREFLOOP_APP_TOKEN", raising=False)
    a = write(tmp_path / "a.jsonl", [{"prompt": "q?", "responses": ["x"]}])
    b = write(tmp_path / "b.jsonl", [{"prompt": "other?", "responses": ["y"]}])
    out = tmp_path / "items.jsonl"
    cases = [
        (["--policy-samples", a, "--reference-samples", b, "--items-out", str(out)], "no prompt in common"),
        (["--policy-samples", a, "--reference-samples", a], "missing option --url"),
        (["--policy-samples", a, "--reference-samples", a, "--url", "http://127.0.0.1:9"], "missing option --token"),
        (["--policy-samples", a, "--reference-samples", a, "--url", "http://127.0.0.1:9", "--token", "t"],
         "missing option --project"),
        (["--policy-samples", a, "--reference-samples", a, "--items-out", str(out), "--name", "x",
          "--reference-name", "x"], "must differ"),
        (["--policy-samples", a, "--reference-samples", b, "--items-out", str(out), "--overlap", "0"], "--overlap"),
    ]
    for args, msg in cases:
        assert main(["human-project", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err and len(err.strip().splitlines()) == 1, err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q?", "responses": ["x"]}\n{"prompt": "r?", "responses": "oops"}\n')
    assert main(["human-project", "--policy-samples", a, "--reference-samples", str(bad), "--items-out",
                 str(out)]) == 2
    assert f"{bad}:2" in capsys.readouterr().err
    assert not out.exists()
