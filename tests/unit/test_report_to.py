"""--report-to: metrics go to TensorBoard event files and/or a Weights & Biases run besides metrics.jsonl; a
destination whose package is missing is refused before anything is written, naming the extra to install."""

from __future__ import annotations

import sys
import types

import pytest

from prefloop.cli import run_command
from prefloop.recipes.sft import SFTConfig, run_sft
from prefloop.runtime.metrics import MetricsLogger, WandbSink


def tensorboard_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_hold_the_logged_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    log = MetricsLogger(tmp_path / "metrics.jsonl", report_to="tensorboard")
    log.log(1, {"loss/sft": 2.5, "lr": 1e-4, "note": "text", "skipped": None})
    log.log(2, {"loss/sft": 1.5, "lr": 5e-5})
    log.close()
    got = tensorboard_scalars(tmp_path / "tensorboard")
    assert got["loss/sft"] == [(1, 2.5), (2, 1.5)]
    assert [s for s, _ in got["lr"]] == [1, 2] and got["lr"][1][1] == pytest.approx(5e-5)
    assert set(got) == {"loss/sft", "lr"}  # text, None, step and time are not scalars
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2  # the file as before


def test_no_sink_files_from_a_process_that_does_not_log(tmp_path):
    log = MetricsLogger(tmp_path / "metrics.jsonl", enabled=False, report_to="tensorboard")
    log.log(1, {"loss": 1.0})
    assert list(tmp_path.iterdir()) == []


def test_wandb_run_gets_every_step(tmp_path, monkeypatch):
    calls = []

    class Run:
        def log(self, data, step):
            calls.append(("log", step, data))

        def finish(self):
            calls.append(("finish",))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    log = MetricsLogger(tmp_path / "run" / "metrics.jsonl", report_to="wandb", run_config=SFTConfig(lr=3e-4))
    log.log(1, {"loss/sft": 2.0, "tag": "x"})
    log.log(3, {"loss/sft": 1.0})
    log.close()
    init_kwargs = calls[0][1]
    assert init_kwargs["name"] == "run" and init_kwargs["dir"] == str(tmp_path / "run")
    assert init_kwargs["config"]["lr"] == 3e-4 and init_kwargs["config"]["config"] is None
    assert calls[1:] == [("log", 1, {"loss/sft": 2.0}), ("log", 3, {"loss/sft": 1.0}), ("finish",)]
    assert WandbSink._open is None


@pytest.mark.parametrize("dest,package", [("tensorboard", "tensorboard"), ("none,wandb", "wandb")])
def test_missing_package_is_a_one_line_error_naming_the_extra(dest, package, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, package, None)  # `import package` raises ImportError
    ran = []
    code = run_command(SFTConfig, ran.append, ["--report-to", dest, "--out", str(tmp_path / "o")], "prefloop sft", "")
    err = capsys.readouterr().err
    assert code == 2 and ran == [] and not (tmp_path / "o").exists()
    assert err.strip() == (f"error: --report-to {package} needs the {package} package: "
                           f"pip install 'prefloop[{package}]'")


def test_unknown_destination_is_refused(tmp_path, capsys):
    code = run_command(SFTConfig, lambda c: None, ["--report-to", "tensorbord", "--out", str(tmp_path / "o")],
                       "prefloop sft", "")
    assert code == 2 and "unknown destination 'tensorbord'" in capsys.readouterr().err


def test_python_api_refuses_a_missing_package_before_loading_anything(tmp_path, monkeypatch):
    from prefloop.errors import InputError

    monkeypatch.setitem(sys.modules, "tensorboard", None)
    cfg = SFTConfig(model=str(tmp_path / "no-model"), data=tmp_path / "no-data.jsonl", out=tmp_path / "o",
                    report_to="tensorboard")
    with pytest.raises(InputError, match=r"prefloop\[tensorboard\]"):  # not the missing model or data
        run_sft(cfg)
    assert not (tmp_path / "o").exists()
