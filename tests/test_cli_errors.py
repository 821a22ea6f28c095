"""Bad input on the command line: one line naming the problem, non-zero exit, nothing left behind."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from autosparse.cli import main

from helpers import write_file


def smoke_with(tmp_path: Path, mutate) -> Path:
    from autosparse.config import resolve_config_path

    data = yaml.safe_load(resolve_config_path("smoke").read_text())
    mutate(data)
    return write_file(tmp_path, yaml.safe_dump(data), "bad.yaml")


def run_and_fail(capsys, tmp_path: Path, *args: str) -> str:
    workspace = tmp_path / "ws"
    code = main([*args, "--workspace", str(workspace)])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1, err
    assert err.startswith("autosparse: error: ")
    assert not any((workspace / kind).exists() for kind in ("irp", "scorer", "allocator", "cell", "report", "ray")), \
        "stage output left behind"
    return err


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d.update(colour="blue"), "unknown key 'colour'"),
    (lambda d: d["matrix"].update(seeds="a"), "matrix.seeds"),
    (lambda d: d["matrix"].update(sparsities=[1.5]), "sparsity 1.5 is outside (0, 1)"),
    (lambda d: d["matrix"].update(sparsities=[0.0]), "sparsity 0.0 is outside (0, 1)"),
    (lambda d: d["matrix"].update(sparsities=[]), "sparsities: must not be empty"),
    (lambda d: d["irp"]["train"].update(epochs="many"), "irp.train.epochs: expected int"),
    (lambda d: d["matrix"]["targets"].append({"model": "transformer9000", "dataset": "digits"}),
     "unknown model 'transformer9000'"),
    (lambda d: d["sources"][0].update(dataset="imagenet22k"), "unknown dataset 'imagenet22k'"),
    (lambda d: d["matrix"].update(methods=["snip", "oracle"]), "matrix.methods[1]: unknown pruning criterion 'oracle'"),
    (lambda d: d["matrix"].update(methods=["snip/iter0"]), "steps must be at least 1"),
    (lambda d: d["matrix"].update(methods=["autos:nobody"]), "no scorer named 'nobody'"),
    (lambda d: d["matrix"].update(methods=["snip@alloc:vibes"]), "unknown allocation 'vibes'"),
    (lambda d: d["matrix"]["targets"].append({"model": "mlp"}), "matrix.targets[2]: missing key 'dataset'"),
    (lambda d: d.update(sources=[{"model": "mlp", "dataset": "digits"}]), "mlp/digits has no source of another"),
    (lambda d: d["irp"].update(features=["w0", "g0", "vibes"]), "unknown feature 'vibes'"),
    (lambda d: d["scorers"][0].update(network="transformer"), "unknown scorer network 'transformer'"),
])
def test_bad_config_is_one_clear_line(capsys, tmp_path, mutate, expected):
    path = smoke_with(tmp_path, mutate)
    err = run_and_fail(capsys, tmp_path, "run", str(path))
    assert expected in err


def test_unknown_key_names_the_file(capsys, tmp_path):
    path = smoke_with(tmp_path, lambda d: d["irp"].update(roundz=3))
    err = run_and_fail(capsys, tmp_path, "run", str(path))
    assert str(path) in err and "'roundz'" in err


def test_malformed_yaml(capsys, tmp_path):
    path = write_file(tmp_path, "name: x\nmatrix: [unclosed\n", "bad.yaml")
    assert "malformed YAML" in run_and_fail(capsys, tmp_path, "run", str(path))


def test_unknown_config_name(capsys, tmp_path):
    assert "unknown config 'quickstrat'" in run_and_fail(capsys, tmp_path, "run", "quickstrat")


def test_bad_override(capsys, tmp_path):
    assert "matrix.sparsities" in run_and_fail(capsys, tmp_path, "run", "smoke", "--set", "matrix.sparsities=[2]")


def test_missing_dataset_with_downloads_off(capsys, tmp_path):
    path = smoke_with(tmp_path, lambda d: (d["matrix"]["targets"].append({"model": "conv", "dataset": "cifar10"}),
                                          d["data"].update(data_root=str(tmp_path / "nodata"))) if "data" in d else (
        d["matrix"]["targets"].append({"model": "conv", "dataset": "cifar10"}),
        d.update(data={"data_root": str(tmp_path / "nodata")})))
    err = run_and_fail(capsys, tmp_path, "run", str(path))
    assert "cifar10" in err and "nodata" in err


def test_unreachable_mlflow_fails_before_training(capsys, tmp_path):
    err = run_and_fail(capsys, tmp_path, "run", "smoke", "--tracking-uri", "http://127.0.0.1:9")
    assert "MLflow" in err and "127.0.0.1:9" in err


def test_prune_bad_sparsity_and_method(capsys, tmp_path):
    assert main(["prune", "--model", "mlp", "--dataset", "digits", "--method", "snip", "--sparsity", "1.5"]) != 0
    assert "sparsity 1.5 is outside (0, 1)" in capsys.readouterr().err
    assert main(["prune", "--model", "mlp", "--dataset", "digits", "--method", "nope", "--sparsity", "0.9"]) != 0
    assert "unknown pruning criterion 'nope'" in capsys.readouterr().err


def test_prune_writes_mask(capsys, tmp_path):
    out = tmp_path / "mask.pt"
    assert main(["prune", "--model", "mlp", "--dataset", "digits", "--method", "snip", "--sparsity", "0.9",
                 "--out", str(out)]) == 0
    from autosparse import Mask

    assert abs(Mask.load(out).density() - 0.1) < 1e-4
    assert "total" in capsys.readouterr().out


def test_help_lists_every_verb(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for verb in ("run", "irp", "fit-scorer", "fit-allocator", "matrix", "prune", "tune", "report", "ui"):
        assert verb in text


def test_unreachable_object_store_workspace(capsys, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    code = main(["run", "smoke", "--workspace", "s3://bucket/ws"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1
    assert "'s3://bucket/ws' is not reachable" in err and "Could not connect" in err


def test_unknown_workspace_scheme(capsys):
    code = main(["run", "smoke", "--workspace", "nosuchfs://bucket/ws"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "'nosuchfs://bucket/ws': no filesystem" in err


def test_a_config_file_that_is_not_text(capsys, tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(bytes(range(256)))
    err = run_and_fail(capsys, tmp_path, "run", str(path))
    assert str(path) in err and "not UTF-8 text" in err


@pytest.mark.parametrize("size", ["0", "-3", "x"])
def test_prune_rejects_a_batch_size_that_is_not_positive(capsys, size):
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", "--model", "mlp", "--dataset", "digits", "--method", "snip", "--sparsity", "0.9",
              "--batch-size", size])
    assert exit_info.value.code == 2
    assert "--batch-size" in capsys.readouterr().err


def test_a_workspace_that_is_a_file(capsys, tmp_path):
    workspace = tmp_path / "taken"
    workspace.write_text("not a folder")
    code = main(["run", "smoke", "--workspace", str(workspace)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"workspace {str(workspace)!r} is a file, not a folder" in err


def test_a_bug_is_exit_one_with_one_line_and_a_traceback_only_with_verbose(capsys, monkeypatch):
    import autosparse.cli as cli

    def broken(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setitem(cli.COMMANDS, "prune", broken)
    argv = ["prune", "--model", "mlp", "--dataset", "digits", "--method", "snip", "--sparsity", "0.9"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "internal error" in err and "ZeroDivisionError: division by zero" in err
    with pytest.raises(ZeroDivisionError):
        main([*argv, "-v"])


def test_user_errors_inside_ray_wrappers_stay_user_errors():
    from autosparse.errors import UserError, describe, is_user_error

    class TaskError(Exception):
        pass

    wrapped = TaskError("ray.exceptions.RayTaskError(...)")
    wrapped.cause = UserError("dataset 'x' not found under '/d'")
    assert is_user_error(wrapped) and describe(wrapped) == "dataset 'x' not found under '/d'"
    bug = TaskError("wrapper")
    bug.cause = KeyError("internal")
    assert not is_user_error(bug) and describe(bug) == "KeyError: 'internal'"


def test_a_user_error_raised_in_a_ray_task_is_described_by_its_own_message():
    """Ray re-raises a task's error as a class deriving from both RayTaskError and the error's own class,
    whose message is Ray's traceback: the one line is the error's own message."""
    from ray.exceptions import RayTaskError

    from autosparse.errors import describe, is_user_error
    from autosparse.storage import StorageError

    raised = RayTaskError("execute_job", "Traceback ...", StorageError("cannot write '/ws/cell/x': no space left on device"))
    raised = raised.as_instanceof_cause()
    assert isinstance(raised, StorageError) and is_user_error(raised)
    assert describe(raised) == "cannot write '/ws/cell/x': no space left on device"
