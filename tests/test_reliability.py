"""Faults and bad input around real Ray: NaN training stops cleanly, unreachable Ray fails fast, bad
scorer and mask files are one-line errors, and an interrupted stage write is never taken as finished."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from autosparse import Mask, build_model
from autosparse.cli import main
from autosparse.masks import MaskError
from autosparse.orchestration.store import StageStore

from conftest import run_cli


def test_interrupted_stage_write_is_not_finished(tmp_path: Path) -> None:
    store = StageStore(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with store.writing("cell", "abc") as (folder, record):
            (folder / "result.json").write_text("{}")
            raise KeyboardInterrupt
    assert not store.done("cell", "abc")
    assert list((tmp_path / "cell").iterdir()) == []
    killed = tmp_path / "cell" / ".tmp-abc-0badc0de"  # what a SIGKILLed writer leaves behind
    killed.mkdir()
    (killed / "result.json").write_text("{partial")
    with store.writing("cell", "abc") as (folder, record):
        (folder / "result.json").write_text("{}")
        record["label"] = "x"
    assert store.record("cell", "abc")["label"] == "x"
    assert not killed.exists()  # the next attempt at the same job cleared it
    assert store.done("cell", "abc") and store.finished("cell") == ["abc"]


def test_truncated_and_foreign_scorer_files_via_cli(capsys, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(foreign))
    for path, expected in ((truncated, "not a readable scorer file"), (foreign, "not an autosparse scorer")):
        code = main(["prune", "--model", "mlp", "--dataset", "digits", "--method", str(path), "--sparsity", "0.9"])
        err = capsys.readouterr().err.strip()
        assert code != 0 and len(err.splitlines()) == 1
        assert expected in err and str(path) in err


def test_mask_for_another_model_is_rejected(tmp_path: Path) -> None:
    from autosparse import apply_mask

    path = tmp_path / "mask.pt"
    Mask.dense(build_model("mlp", (1, 8, 8), 10)).save(path)
    with pytest.raises(MaskError, match="does not fit the model"):
        apply_mask(build_model("conv", (1, 8, 8), 10), Mask.load(path))


@pytest.mark.slow
def test_nan_loss_stops_the_irp_stage_with_one_line(capsys, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    code = main(["irp", "smoke", "--workspace", str(workspace), "--no-progress", "--set", "irp.train.lr=1000000000000.0",
                 "--set", "matrix.irp_reference=false"])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1 and "training loss became nan" in err
    assert not (workspace / "irp").exists() or not [p for p in (workspace / "irp").iterdir()
                                                    if not p.name.startswith(".")]


def test_unreachable_ray_address_fails_fast(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_cli("irp", "smoke", "--workspace", str(tmp_path / "ws"), "--ray-address", "127.0.0.1:1")
    err = result.stderr.strip()
    assert result.returncode != 0 and "cannot reach Ray at '127.0.0.1:1'" in err and len(err.splitlines()) == 1
    assert time.monotonic() - started < 60
    assert not (tmp_path / "ws").exists()


def test_the_ray_address_check_dials_what_ray_init_dials() -> None:
    """A head listening on loopback only passes a connect to 127.0.0.1, but `ray.init` dials the network
    address Ray rewrites it to: the check must fail there, in seconds, not after Ray's minutes of retries."""
    import socket

    from autosparse.orchestration.runtime import RayUnavailableError, check_ray_address, dialed_address

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        if dialed_address(address).startswith("127."):
            pytest.skip("this machine has no network address for Ray to rewrite loopback to")
        with pytest.raises(RayUnavailableError, match=f"cannot reach Ray at '{address}' \\(Ray dials "):
            check_ray_address(address, timeout=2)


def test_stage_records_keep_the_order_they_were_written_in(tmp_path: Path) -> None:
    """Per-layer results are read in the network's layer order (input to output), not alphabetically."""
    store = StageStore(tmp_path)
    with store.writing("cell", "abc") as (folder, record):
        record["layer_densities"] = {"0.weight": 0.5, "2.weight": 0.1, "10.weight": 0.2}
    assert list(store.record("cell", "abc")["layer_densities"]) == ["0.weight", "2.weight", "10.weight"]
