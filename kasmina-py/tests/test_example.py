"""The training example runs to its end and the grown network beats the control."""

from __future__ import annotations

import pathlib
import runpy

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
