"""Progress without a terminal (a line at a steady interval, on a fake clock) and the end-of-run summary."""

from __future__ import annotations

import io

from prefloop.runtime.progress import StepProgress, run_summary


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_without_a_terminal_a_line_every_interval_with_step_eta_and_metrics():
    clock, out = FakeClock(), io.StringIO()
    bar = StepProgress("sft", total=100, every=30, clock=clock, stream=out, tty=False)
    for step in range(1, 101):
        clock.t += 2.0  # 2 s per step: a line at steps 15, 30, 45, ...
        bar.update(1, loss=1.0 / step)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 6, lines  # 200 s of steps, one line per 30 s
    assert lines[0] == "sft: step 15/100 (15%), 30s elapsed, ETA 2m50s, loss=0.06667"
    assert lines[-1].startswith("sft: step 90/100 (90%), 3m00s elapsed, ETA 20s, loss=")


def test_a_resumed_run_counts_its_rate_from_where_it_resumed():
    clock, out = FakeClock(), io.StringIO()
    bar = StepProgress("ppo", total=100, start=50, every=10, clock=clock, stream=out, tty=False)
    for _ in range(5):
        clock.t += 2.0
        bar.update(1)
    assert out.getvalue().splitlines() == ["ppo: step 55/100 (55%), 10s elapsed, ETA 1m30s"]


def test_interval_from_the_environment_and_zero_turns_lines_off(monkeypatch):
    clock, out = FakeClock(), io.StringIO()
    monkeypatch.setenv("PREFLOOP_PROGRESS_EVERY", "0")
    bar = StepProgress("dpo", total=10, clock=clock, stream=out, tty=False)
    for _ in range(10):
        clock.t += 100
        bar.update(1)
    assert out.getvalue() == ""
    monkeypatch.setenv("PREFLOOP_PROGRESS_EVERY", "5")
    bar = StepProgress("dpo", total=10, clock=clock, stream=out, tty=False)
    clock.t += 4
    bar.update(1)
    assert out.getvalue() == ""
    clock.t += 1
    bar.update(1)
    assert out.getvalue().startswith("dpo: step 2/10 (20%), 5s elapsed")


def test_on_a_terminal_no_plain_lines_and_disabled_ranks_print_nothing():
    clock, out = FakeClock(), io.StringIO()
    quiet = StepProgress("sft", total=4, enabled=False, every=1, clock=clock, stream=out, tty=False)
    clock.t += 10
    quiet.update(1)
    assert out.getvalue() == ""
    on_tty = StepProgress("sft", total=4, every=1, clock=clock, stream=out, tty=True)
    clock.t += 10
    on_tty.update(1)
    on_tty.close()
    assert out.getvalue() == ""


def test_summary_is_one_line_with_final_loss_held_out_and_where_the_model_is():
    history = [{"step": 1, "loss/reward": 0.9}, {"step": 40, "loss/reward": 0.61234, "lr": 0.0},
               {"step": 40, "eval/accuracy": 0.7125, "train_comparisons": 90}]
    final = {"eval/accuracy": 0.7125, "eval/margin": 0.3}
    assert run_summary("reward", 40, history, final, "runs/reward/model") == \
        "reward: 40 steps, final loss 0.6123 (held-out accuracy 0.7125), model in runs/reward/model"
    assert run_summary("sft", 3, [{"step": 3, "loss/sft": 1.5}], {"steps": 3}, "o/model") == \
        "sft: 3 steps, final loss 1.5, model in o/model"
    rl = [{"step": 2, "loss/policy": 0.1, "rollout/score_mean": 0.25, "kl/k1": 1.5}]
    assert run_summary("ppo", 2, rl, {}, "p/model") == "ppo: 2 steps, final score 0.25, KL 1.5, model in p/model"
