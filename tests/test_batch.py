"""`attnkit batch`: line-numbered checks before any work, identical files on one or two processes, resume, failures."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from attnkit.cli import main
from attnkit.files import save_safetensors
from attnkit.run import Pipelines, load_pipeline

LEFT_RIGHT = {"regions": [{"prompt": "a red circle", "box": [0, 0, 0.5, 1]},
                          {"prompt": "a blue square", "box": [0.5, 0, 1, 1]}]}
SIX = [
    {"command": "generate", "model": "tiny-sd3", "prompt": "a red circle", "steps": 2, "name": "generate"},
    {"command": "regional", "model": "tiny-sd3", "spec": LEFT_RIGHT, "seed": 3, "steps": 2, "name": "regional"},
    {"command": "maps", "model": "tiny-sd15", "prompt": "a red circle", "steps": 2, "size": 32, "name": "maps"},
    {"command": "segment", "model": "tiny-sd15", "prompt": "a red circle", "steps": 4, "threshold": 0.01,
     "name": "segment"},
    {"command": "regional", "spec": LEFT_RIGHT, "seed": 4, "steps": 2, "name": "regional-flux"},
    {"command": "generate", "prompt": "a blue square", "steps": 2, "seed": 9, "name": "generate-flux"},
]


def write_jobs(path: Path, jobs: list) -> Path:
    path.write_text("".join((job if isinstance(job, str) else json.dumps(job)) + "\n" for job in jobs))
    return path


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "manifest.jsonl"}


def manifest(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def run_subprocess(argv: list[str], **kwargs) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_bad_lines_are_reported_by_line_number_before_any_job_runs(tmp_path, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [
        SIX[0],
        {"command": "paint", "model": "tiny-sd3", "name": "a"},
        {"command": "regional", "model": "tiny-sd3", "name": "b"},
        {"command": "regional", "model": "tiny-sd3", "name": "c",
         "spec": {"regions": [{"prompt": "a red circle", "box": [0, 0, 1.5, 1]}]}},
        '{"command": "generate", ',
        {"command": "generate", "model": "tiny-sd3", "prompt": "x", "name": "generate"},
        {"command": "generate", "model": "tiny-sd3", "prompt": "x", "steps": 0, "name": "d"},
    ])
    assert main(["batch", str(jobs), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "6 bad line(s)" in err
    for number, words in [(2, "unknown command 'paint'"), (3, "--spec"), (4, "box"), (5, "not valid JSON"),
                          (6, "taken by line 1"), (7, "--steps")]:
        line = next(text for text in err.splitlines() if text.strip().startswith(f"line {number}:"))
        assert words in line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_one_process_and_two_accelerate_processes_write_identical_files(tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", SIX)
    assert main(["batch", str(jobs), "--out", str(tmp_path / "one"), "--model", "tiny-flux", "--no-progress"]) == 0
    two = run_subprocess([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "attnkit",
                          "batch", str(jobs), "--out", str(tmp_path / "two"), "--model", "tiny-flux", "--no-progress"])
    out, err = two.communicate(timeout=600)
    assert two.returncode == 0, err
    assert "on 2 process(es)" in out
    assert {record["process"] for record in manifest(tmp_path / "two")} == {0, 1}
    one_files, two_files = files(tmp_path / "one"), files(tmp_path / "two")
    assert len(one_files) > 20 and one_files == two_files
    assert {record["name"] for record in manifest(tmp_path / "one")} == {job["name"] for job in SIX}


def test_a_killed_run_resumes_without_redoing_finished_jobs(tmp_path):
    slow = [dict(job, steps=12, name=f"job-{i}") for i, job in enumerate([SIX[0]] * 6)]
    slow = [dict(job, seed=i) for i, job in enumerate(slow)]
    jobs = write_jobs(tmp_path / "jobs.jsonl", slow)
    out = tmp_path / "out"
    first = run_subprocess([sys.executable, "-m", "attnkit", "batch", str(jobs), "--out", str(out), "--no-progress"])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        if (out / "manifest.jsonl").is_file() and len(manifest(out)) >= 2:
            first.kill()
            break
        time.sleep(0.02)
    first.communicate(timeout=60)
    done = {record["name"] for record in manifest(out)}
    assert 2 <= len(done) < 6, "the run finished before it could be killed: make the jobs slower"
    stamps = {name: (out / name / "image.png").stat().st_mtime_ns for name in done}
    assert main(["batch", str(jobs), "--out", str(out), "--no-progress"]) == 0
    assert all((out / job["name"] / "image.png").is_file() for job in slow)
    assert {name: (out / name / "image.png").stat().st_mtime_ns for name in done} == stamps
    names = [record["name"] for record in manifest(out)]
    assert sorted(names) == sorted(job["name"] for job in slow)  # each job recorded once
    assert not (out / ".partial").exists()


def test_a_failing_job_is_recorded_and_the_others_finish(tmp_path, capsys):
    failing = {"command": "maps", "model": "tiny-sd15", "prompt": "a red circle", "words": ["blue"], "steps": 2,
               "name": "bad-word"}
    jobs = write_jobs(tmp_path / "jobs.jsonl", [SIX[0], failing, SIX[2]])
    out = tmp_path / "out"
    assert main(["batch", str(jobs), "--out", str(out), "--no-progress"]) == 2
    assert "1 job(s) failed (bad-word: 'blue' is not a word" in capsys.readouterr().err
    records = {record["name"]: record for record in manifest(out)}
    assert records["bad-word"]["status"] == "failed" and "'blue'" in records["bad-word"]["error"]
    traceback = records["bad-word"]["traceback"]
    assert traceback.startswith("Traceback") and "AttnkitError: 'blue' is not a word" in traceback
    assert "traceback" not in records["generate"]
    assert records["generate"]["output"].strip().endswith("image.png")  # what the job printed: the file it wrote
    assert records["generate"]["status"] == records["maps"]["status"] == "finished"
    assert (out / "generate" / "image.png").is_file() and (out / "maps" / "maps.safetensors").is_file()
    assert not (out / "bad-word").exists()
    job = json.loads((out / "maps" / "job.json").read_text())
    assert job["job"]["name"] == "maps" and set(job["versions"]) == {"attnkit", "diffusers", "torch"}
    # the rerun retries the failed job only
    assert main(["batch", str(jobs), "--out", str(out), "--no-progress"]) == 2
    assert [record["name"] for record in manifest(out)][3:] == ["bad-word"]


def test_python_m_attnkit_runs_the_attnkit_command():
    done = subprocess.run([sys.executable, "-m", "attnkit", "batch", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "JOBS" in done.stdout.upper() and "--out" in done.stdout


def test_safetensors_files_do_not_depend_on_the_order_of_their_metadata(tmp_path):
    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(4)}
    metadata = {f"key{i}": str(i) * (i + 1) for i in range(12)}
    save_safetensors(tensors, tmp_path / "one.safetensors", metadata)
    save_safetensors(dict(reversed(tensors.items())), tmp_path / "two.safetensors",
                     dict(reversed(metadata.items())))
    assert (tmp_path / "one.safetensors").read_bytes() == (tmp_path / "two.safetensors").read_bytes()
    loaded = load_file(tmp_path / "one.safetensors")
    assert torch.equal(loaded["b"], tensors["b"]) and torch.equal(loaded["a"], tensors["a"])


def test_a_batch_processes_pipelines_load_each_model_once_and_plain_loading_loads_anew():
    pipelines = Pipelines()
    first = pipelines("tiny-sd15")
    assert pipelines("tiny-sd15") is first
    assert first._progress_bar_config.get("disable") is True
    assert load_pipeline("tiny-sd15") is not first and Pipelines()("tiny-sd15") is not first


@pytest.mark.slow
def test_eval_shared_by_two_accelerate_processes_prints_the_single_process_json():
    argv = ["eval", "shapes-sd3", "--json", "--seeds", "1"]
    alone = run_subprocess([sys.executable, "-m", "attnkit", *argv])
    shared = run_subprocess([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                             "-m", "attnkit", *argv])
    (one, err_one), (two, err_two) = alone.communicate(timeout=900), shared.communicate(timeout=900)
    assert alone.returncode == 0 and shared.returncode == 0, err_one + err_two
    assert len(one.splitlines()) == len(two.splitlines()) == 1  # only the main process reports
    result = json.loads(one)
    assert result["segment_miou"] is not None and result["regional_adherence"] is not None
    assert two == one
