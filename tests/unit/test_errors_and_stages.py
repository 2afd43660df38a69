"""The one errors module (the family the CLI turns into exit code 2) and the one stage evaluation (its KL key,
the reference's KL, its means), on hand-made samples: no model."""

from __future__ import annotations

import inspect

import pytest

from prefloop import errors
from prefloop.eval.sampling import PolicySamples
from prefloop.eval.stages import stage_means, stage_stats

INPUT_ERRORS = ("DataError", "ConfigError", "PrecisionError", "CLIError", "ModelLoadError")


def test_every_error_is_a_prefloop_error_and_bad_input_is_an_input_error():
    classes = {n: c for n, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__}
    assert set(INPUT_ERRORS) | {"PrefloopError", "InputError", "AppError", "FeedbackError"} <= set(classes)
    assert all(issubclass(c, errors.PrefloopError) for c in classes.values())
    for name in INPUT_ERRORS:  # what `prefloop ...` reports as one `error:` line with exit code 2
        assert issubclass(classes[name], errors.InputError) and issubclass(classes[name], ValueError), name
    for name in ("LogitsMismatchError", "AppError", "SecretKeyError", "FeedbackError", "RecordError"):
        assert not issubclass(classes[name], errors.InputError), name


def test_require_names_the_first_missing_option():
    class Cfg:
        model, data, out = "m", "", None

    errors.require(Cfg, "model")
    with pytest.raises(errors.ConfigError, match="^missing option --data$"):
        errors.require(Cfg, "model", "data", "out")


def _samples(kl: list[list[float]]) -> PolicySamples:
    return PolicySamples(prompts=["p1", "p2"], responses=[["a b c", "a b d"], ["x y", "x y z"]],
                         ended=[[True, False], [True, True]], lengths=[[3, 3], [2, 3]],
                         kl_k1=kl, kl_k3=[[abs(v) for v in row] for row in kl])


def test_stage_stats_names_the_kl_to_ref_and_the_reference_spends_none():
    measured = [[0.5, 1.5], [2.0, 4.0]]
    _, gold, values = stage_stats(_samples(measured), None, [[1.0, 2.0], [3.0, 4.0]])
    assert gold == [] and values["kl_to_ref"] == measured and values["kl_to_ref_k3"] == measured
    assert values["reward_model_mean"] == [[1.0, 2.0], [3.0, 4.0]]
    assert not any(k.startswith("kl_to_sft") for k in values)
    # The reference's own KL is 0 by definition, even where rounding noise was measured.
    _, _, ref = stage_stats(_samples([[1e-7, -2e-7], [3e-7, 0.0]]), None, None, reference=True)
    assert ref["kl_to_ref"] == ref["kl_to_ref_k3"] == [[0.0, 0.0], [0.0, 0.0]]


def test_stage_means_match_the_per_prompt_values_and_differences_pair_the_stages():
    rows, values = {}, {}
    for name, kl in (("sft", [[0.0, 0.0], [0.0, 0.0]]), ("ppo", [[1.0, 3.0], [2.0, 2.0]])):
        rows[name], _, values[name] = stage_stats(_samples(kl), None, None, reference=name == "sft")
    stages, summary = stage_means(rows, values, seed=0)
    assert list(stages) == ["sft", "ppo"] and stages["ppo"]["kl_to_ref"] == pytest.approx(2.0)
    assert stages["sft"]["kl_to_ref"] == 0.0 and summary["differences"]["ppo - sft"]["kl_to_ref"]["diff"] == 2.0
    # one self-BLEU per prompt, also under its short name; the corpus-level distinct-n has no interval
    assert stages["ppo"]["self_bleu"] == stages["ppo"]["per_input/self_bleu"]
    assert "distinct_1" in stages["ppo"] and "distinct_1" not in summary["intervals"]["ppo"]
