"""The training example runs to its end and the grown network beats the control."""

from __future__ import annotations

import pathlib
import runpy

import pytest

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "train.py"


def test_the_example_grows_seeds_that_lower_the_loss(device: str, capsys) -> None:  # type: ignore[no-untyped-def]
    main = runpy.run_path(str(EXAMPLE))["main"]
    result = main(["--device", device])
    grown, control = result["grown"], result["control"]
    assert grown["fossilized"], "no seed reached FOSSILIZED"
    assert all(grown["states"][i] == "FOSSILIZED" for i in grown["fossilized"])
    assert grown["loss"] < control["loss"]
    assert control["fossilized"] == [] and set(control["states"]) == {"DORMANT"}
    out = capsys.readouterr().out
    assert "fossilized:" in out and "with germination off" in out


def test_the_digits_experiment_runs_and_writes_its_report(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("sklearn", reason="the digits experiment needs scikit-learn (scripts/test.sh installs it)")
    pytest.importorskip("matplotlib", reason="the digits experiment needs matplotlib (scripts/test.sh installs it)")
    main = runpy.run_path(str(EXAMPLE.with_name("digits.py")))["main"]
    result = main(["--seeds", "1", "--epochs", "4", "--steps", "10", "--out", str(tmp_path)])
    report = (tmp_path / "RESULTS.md").read_text()
    for row in ("host with germination", "host, germination off", "static ReLU network"):
        assert row in report
    assert "Dormant layers' cost" in report and "Against the targets" in report
    assert (tmp_path / "digits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(result["accuracy"]) == {"germination", "no germination", "static"}
    assert all(0.5 < a[0] <= 1.0 for a in result["accuracy"].values())
