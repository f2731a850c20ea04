"""The CLI: figures as JSON, and bad input as one line with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from condconv_nas.cli import main
from condconv_nas.nn.cost import count_cost
from condconv_nas.nn.presets import get_preset, preset_names
from tests.conftest import ROOT, finished


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_presets_json_lists_every_preset(capsys):
    code, out, _ = run(capsys, "presets", "--json")
    rows = json.loads(out)["presets"]
    assert code == 0 and [r["name"] for r in rows] == preset_names()
    assert rows[0]["madds"] == count_cost(get_preset(rows[0]["name"])).madds


def test_cost_json_gives_integers_and_layers(capsys):
    code, out, _ = run(capsys, "cost", "--preset", "mobilenet_v2", "--json", "--per-layer")
    data = json.loads(out)
    assert code == 0 and isinstance(data["madds"], int) and isinstance(data["params"], int)
    assert sum(layer["madds"] for layer in data["layers"]) == data["madds"]


def test_cost_resolution_and_classes_change_the_count(capsys):
    _, out, _ = run(capsys, "cost", "--preset", "efficientnet_b0", "--resolution", "112",
                    "--num-classes", "10", "--json")
    spec = get_preset("efficientnet_b0").replace(input_size=112, num_classes=10)
    assert json.loads(out) == count_cost(spec).to_dict()


def test_cost_of_an_arch_file(tmp_path, capsys):
    spec = get_preset("condconv_efficientnet_b0_8e_proxy32")
    path = tmp_path / "a.json"
    path.write_text(spec.to_json())
    _, out, _ = run(capsys, "cost", "--arch", str(path), "--json")
    assert json.loads(out)["madds"] == count_cost(spec).madds


BAD = [
    (["cost", "--preset", "resnet50"], "preset 'resnet50' is unknown"),
    (["cost", "--preset", "mobilenet_v2", "--resolution", "2"], "--resolution"),
    (["cost", "--preset", "mobilenet_v2", "--num-classes", "0"], "--num-classes"),
    (["cost", "--arch", "/no/such/file.json"], "cannot read"),
]


@pytest.mark.parametrize("argv, needle", BAD)
def test_bad_input_is_one_line_exit_2(argv, needle, capsys):
    code, out, err = run(capsys, *argv)
    assert code == 2 and needle in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("content, field", [
    ('{"stages": [{"repeats": 1, "kernel": 4, "stride": 1, "expand": 6, "out_channels": 8}]}',
     "kernel"),
    ('{"stages": [{"repeats": 1, "kernel": 3, "stride": 3, "expand": 6, "out_channels": 8}]}',
     "stride"),
    ('{"stages": [{"repeats": 1, "kernel": 3, "stride": 1, "expand": 6, "out_channels": -8}]}',
     "out_channels"),
    ('{"stages": [{"repeats": 1, "kernel": 3, "stride": 1, "expand": 6, "out_channels": 8,'
     ' "experts": 0.5}]}', "experts"),
    ('{"stages": [', "not valid JSON"),
    ('[]', "must be an object"),
])
def test_malformed_arch_json_names_the_field(tmp_path, capsys, content, field):
    path = tmp_path / "arch.json"
    path.write_text(content)
    code, _, err = run(capsys, "cost", "--arch", str(path))
    assert code == 2 and field in err and err.count("\n") == 1


def test_console_script_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "condconv_nas.cli", "cost", "--preset", "x"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("condconv-nas: error: preset 'x' is unknown")


def test_train_synthetic_json(capsys):
    code, out, err = run(capsys, "train", "--preset", "mobilenet_v2_proxy28", "--dataset",
                         "synthetic", "--epochs", "1", "--batch-size", "64", "--json",
                         "--no-progress", "--eval-test")
    data = json.loads(out)
    assert code == 0
    assert {"val_acc", "test_acc", "seconds", "images_per_s", "madds", "params"} <= set(data)
    spec = get_preset("mobilenet_v2_proxy28").replace(input_size=16, num_classes=4)
    assert data["madds"] == count_cost(spec).madds  # adapted to the data, and said so
    assert "set to 1x16x16 input and 4 classes" in err


TRAIN_BAD = [
    (["--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["--dataset", "synthetic", "--batch-size", "100000"], "batch size 100000 is larger"),
    (["--dataset", "npz:/no/such/dir"], "does not exist"),
    (["--dataset", "cifar10", "--data-dir", "/no/such/dir"], "cifar10 not found"),
    (["--dataset", "synthetic", "--epochs", "0"], "recipe.epochs"),
    (["--dataset", "synthetic", "--device", "tpu"], "--device"),
]


@pytest.mark.parametrize("extra, needle", TRAIN_BAD)
def test_train_bad_input(extra, needle, capsys, monkeypatch):
    monkeypatch.setenv("CONDCONV_NAS_DATA", "/no/such/dir")
    code, out, err = run(capsys, "train", "--preset", "mobilenet_v2_proxy28", "--no-progress", *extra)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("condconv-nas: error: ") and needle in err


def test_train_missing_fashion_mnist(capsys, monkeypatch, tmp_path):
    import condconv_nas.train.data as D

    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", tmp_path / "none")
    monkeypatch.delenv("CONDCONV_NAS_DATA", raising=False)
    code, _, err = run(capsys, "train", "--preset", "mobilenet_v2_proxy28", "--dataset",
                       "fashion-mnist", "--data-dir", str(tmp_path))
    assert code == 2 and f"not found in {tmp_path}" in err  # the folder named, nowhere else
    code, _, err = run(capsys, "train", "--preset", "mobilenet_v2_proxy28", "--dataset",
                       "fashion-mnist")
    assert code == 2 and "apt-get install dataset-fashion-mnist" in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU error")
def test_train_cuda_without_gpu(capsys):
    code, _, err = run(capsys, "train", "--preset", "mobilenet_v2_proxy28", "--dataset",
                       "synthetic", "--device", "cuda")
    assert code == 2 and "no CUDA GPU" in err


def test_search_then_studies(tmp_path, capsys):
    study = tmp_path / "s.yaml"
    space = ROOT / "search_spaces" / "tiny.yaml"
    study.write_text(f"name: s\nspace: {space}\ndataset: synthetic\ntrials: 2\n"
                     "recipe: {epochs: 1, batch_size: 64}\n")
    code, out, _ = run(capsys, "search", str(study))
    assert code == 0 and out.count("\ntrial ") + out.startswith("trial ") == 2
    code, out, _ = run(capsys, "studies", "--storage", str(tmp_path / "s.journal"), "--json")
    row = json.loads(out)["studies"][0]
    assert code == 0 and row["name"] == "s" and row["COMPLETE"] == 2


@pytest.mark.parametrize("content, extra, needle", [
    ("name: s\nspace: [\n", [], "not valid YAML"),
    ("name: s\ndataset: synthetic\ntrials: 2\n", [], "space: is required"),
    ("name: s\nspace: SPACE\ndataset: synthetic\ntrials: two\n", [], "trials: must be an integer"),
    ("name: s\nspace: SPACE\ndataset: synthetic\ntrials: 2\n", ["--storage", "bogus://x"],
     "cannot be opened"),
    ("name: s\nspace: SPACE\ndataset: synthetic\ntrials: 2\n", ["--trials", "0"], "--trials"),
])
def test_search_bad_input(tmp_path, capsys, content, extra, needle):
    space = ROOT / "search_spaces" / "tiny.yaml"
    study = tmp_path / "s.yaml"
    study.write_text(content.replace("SPACE", str(space)))
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run(capsys, "search", str(study), *extra)
    assert code == 2 and needle in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created


def _stop_a_search(tmp_path, settings: str, stop) -> tuple[list[str], int, str]:
    """Start `search` on the tiny space, `stop(proc)` it one second after its first finished
    trial (mid-way through the next); returns the command, its exit code and its stderr."""
    import signal
    import time

    space = ROOT / "search_spaces" / "tiny.yaml"
    study = tmp_path / "s.yaml"
    study.write_text(f"name: s\nspace: {space}\ndataset: synthetic\n{settings}"
                     "train_limit: 1000\nrecipe: {epochs: 4, batch_size: 64}\n")
    cmd = [sys.executable, "-m", "condconv_nas.cli", "search", str(study)]
    # A shell that started the tests in the background ignores SIGINT, and children inherit that:
    # give the search the default handler, as a terminal would (in a process group of its own).
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:
        if line.startswith("trial "):
            break
    time.sleep(1.0)
    stop(proc)
    _, err = proc.communicate(timeout=120)
    return cmd, proc.returncode, err


@pytest.mark.parametrize("sig", ["SIGINT", pytest.param("SIGTERM", marks=pytest.mark.slow)])
def test_interrupted_search_loses_nothing_and_resumes(tmp_path, sig, stored_trials):
    import signal

    cmd, code, err = _stop_a_search(tmp_path, "trials: 3\n",
                                    lambda proc: proc.send_signal(getattr(signal, sig)))
    assert code == 130 and "Traceback" not in err and "run the same command" in err
    trials = stored_trials(tmp_path / "s.yaml")
    assert trials[0].state.name == "COMPLETE"
    assert trials[1].state.name == "FAIL" and trials[1].user_attrs["stale"]
    assert trials[2].state.name == "WAITING" and trials[2].user_attrs["retry_of"] == 1
    if sig == "SIGTERM":
        return  # the stored state is the one SIGINT leaves (checked above): one resume suffices
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0
    trials = stored_trials(tmp_path / "s.yaml")
    # Three trials finished: trained (COMPLETE) or skipped as a repeat (PRUNED, saying why).
    assert sum(finished(t) for t in trials) == 3
    assert trials[2].state.name == "COMPLETE" and trials[2].params == trials[1].params


@pytest.mark.slow
def test_ctrl_c_to_local_workers_stops_them_all_and_the_study_resumes(tmp_path, stored_trials):
    import os
    import signal

    # A terminal's Ctrl-C reaches the whole process group: the search and its workers.
    cmd, code, err = _stop_a_search(tmp_path, "trials: 6\nworkers: 2\n",
                                    lambda proc: os.killpg(proc.pid, signal.SIGINT))
    assert code == 130 and "Traceback" not in err, err
    stopped = stored_trials(tmp_path / "s.yaml")
    assert sum(t.state.name == "COMPLETE" for t in stopped) < 6
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    trials = stored_trials(tmp_path / "s.yaml")
    # Six finished: trained, or skipped as a repeat (two workers may sample one architecture).
    assert sum(finished(t) for t in trials if not t.user_attrs.get("stale")) == 6
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    for t in stopped:  # what was stored before Ctrl-C is kept as it was
        if t.state.name == "COMPLETE":
            assert trials[t.number].values == t.values
