"""`restore submit` against a real Ray head started here on loopback, with token authentication on.

The head is its own Ray instance (own temp dir, ports and session), never the in-process `ray_session` one, so
the two cannot meet; it is stopped by killing exactly the processes of the session it was started in.
"""
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from PIL import Image

from restore.cli import main as restore_main
from restore.manifest import read_manifests
from restore.spec import SpecError
from restore.storage import open_storage
from restore.submit import SubmitError, job_logs, job_status, stop_job, submit, wait

JOB_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_processes(session_id: int) -> list[int]:
    """Every live process in the session that `ray start` opened: the head's daemons and their workers."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, session, ...
        if int(fields[3]) == session_id and fields[0] != "Z":
            found.append(int(entry))
    return found


def stop_session(session_id: int) -> None:
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        for pid in session_processes(session_id):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while session_processes(session_id) and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.fixture(scope="module")
def ray_head():
    """(dashboard URL, token) of a fresh Ray head on 127.0.0.1 with 2 CPUs and token authentication."""
    temp_dir = tempfile.mkdtemp(prefix="rh-")  # short: Ray's socket paths live under it
    token = secrets.token_hex(16)
    bin_dir = Path(sys.executable).parent
    dashboard = free_port()
    command = [
        str(bin_dir / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
        f"--port={free_port()}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        "--include-dashboard=true", "--num-cpus=2", "--num-gpus=0", f"--temp-dir={temp_dir}",
        "--disable-usage-stats", f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
        f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
    ]
    env = {name: value for name, value in os.environ.items() if name not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    log_path = Path(temp_dir) / "ray-start.log"
    with open(log_path, "wb") as log:
        head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if requests.get(f"{url}/api/version", headers={"Authorization": f"Bearer {token}"}, timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray head did not come up:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, token
    finally:
        stop_session(head.pid)
        head.wait(timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)


def write_frames(folder: Path, names: list[str], seed: int = 0) -> None:
    """Small RGB frames, each with a mask of a few scratches, in the default layout ({dir}/masks/{stem}.png)."""
    rng = np.random.default_rng(seed)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / f"{name}.png")
        mask = np.zeros((48, 64), dtype=np.uint8)
        mask[10:12, 5:60] = 255
        mask[30:40, 20:23] = 255
        Image.fromarray(mask).save(folder / "masks" / f"{name}.png")


@pytest.fixture
def job_spec(tmp_path) -> Path:
    write_frames(tmp_path / "frames" / "reel", ["f000", "f001", "f002"])
    spec = {"name": "submitted", "input": "frames", "output": "restored", "include": ["*.png"],
            "restorer": {"name": "telea"}, "batch_size": 2, "commit_every": 2,
            "workers": {"count": 1, "cpus": 1}}
    path = tmp_path / "jobs" / "submitted.yaml"
    path.parent.mkdir()
    # paths relative to the spec's folder: submit must make them absolute before the spec leaves
    path.write_text(yaml.safe_dump({**spec, "input": "../frames", "output": "../restored"}))
    return path


def run_to_end(spec: Path, url: str, token: str) -> tuple[str, str]:
    submission_id = submit(spec, url, token=token)
    state = wait(url, submission_id, token=token, timeout_s=JOB_TIMEOUT_S, poll_s=1.0)
    logs = job_logs(url, submission_id, token=token)
    assert state.status == "SUCCEEDED", f"{state}\n{logs}"
    return submission_id, logs


def test_submitted_job_restores_then_resumes_incrementally(ray_head, job_spec, tmp_path):
    url, token = ray_head
    submission_id, logs = run_to_end(job_spec, url, token)
    assert submission_id.startswith("restore-submitted-")
    assert "3 ok, 0 failed" in logs
    state = job_status(url, submission_id, token=token)
    assert state.entrypoint == "restore run job.yaml" and state.exit_code == 0
    restored = tmp_path / "restored"
    assert sorted(p.name for p in (restored / "reel").glob("*.png")) == ["f000.png", "f001.png", "f002.png"]
    rows = read_manifests(open_storage(str(restored)), "submitted").to_pylist()
    assert sorted(r["input_key"] for r in rows) == ["reel/f000.png", "reel/f001.png", "reel/f002.png"]
    assert {r["status"] for r in rows} == {"ok"} and len({r["run_id"] for r in rows}) == 1

    _, logs = run_to_end(job_spec, url, token)  # nothing new: the rerun processes nothing
    assert "nothing to do" in logs
    assert read_manifests(open_storage(str(restored)), "submitted").num_rows == 3

    write_frames(tmp_path / "frames" / "reel", ["f003", "f004"], seed=1)
    _, logs = run_to_end(job_spec, url, token)  # exactly the two new frames
    assert "2 ok, 0 failed" in logs
    rows = read_manifests(open_storage(str(restored)), "submitted").to_pylist()
    newest_run = max(r["run_id"] for r in rows)
    assert sorted(r["input_key"] for r in rows if r["run_id"] == newest_run) == ["reel/f003.png", "reel/f004.png"]
    assert stop_job(url, submission_id, token=token) is False  # already finished


def test_unknown_job_id_is_named(ray_head):
    url, token = ray_head
    for call in (job_status, job_logs, stop_job):
        with pytest.raises(SubmitError, match=r"no job 'restore-nope-1' on the Ray cluster"):
            call(url, "restore-nope-1", token=token)


def test_missing_token_is_explained(ray_head, job_spec):
    url, _ = ray_head
    with pytest.raises(SubmitError, match="requires a valid token"):
        submit(job_spec, url)
    with pytest.raises(SubmitError, match="requires a valid token"):
        job_status(url, "restore-nope-1", token="wrong")


def test_the_command_logs_in_with_the_token_rays_variables_give_as_the_deploy_guide_sets_them(ray_head):
    """`export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=...`, then `restore jobs ...`: the token reaches the cluster."""
    url, token = ray_head
    env = {name: value for name, value in os.environ.items() if name not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    command = [str(Path(sys.executable).parent / "restore"), "jobs", "status", "restore-nope-1", "--address", url]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "no job 'restore-nope-1' on the Ray cluster" in done.stderr  # the server let it in and looked


def test_an_unreachable_address_is_named(job_spec):
    with pytest.raises(SubmitError, match="cannot connect to the Ray job server at http://127.0.0.1:"):
        submit(job_spec, f"127.0.0.1:{free_port()}")  # nothing listens there


def test_submit_takes_the_dashboard_url_in_ray_address_instead_of_running_here(job_spec, monkeypatch, capsys):
    """As `ray job submit` does: an operator who exported the cluster's URL is never quietly run on a laptop."""
    monkeypatch.setenv("RAY_ADDRESS", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    assert restore_main(["submit", str(job_spec)]) == 2
    assert "cannot connect to the Ray job server at http://127.0.0.1:" in capsys.readouterr().err
    assert not (job_spec.parent.parent / "restored").exists()


def test_silent_server_times_out(job_spec):
    """A head that accepts connections but never answers must not hang the command."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        with pytest.raises(SubmitError, match="did not answer within 1 s"):  # the timeout, not a hang
            job_status(f"http://127.0.0.1:{silent.getsockname()[1]}", "restore-x", timeout_s=1)


def test_invalid_spec_is_refused_before_any_contact(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump({"name": "bad job", "input": "in", "restorer": {"name": "magic"}}))
    with pytest.raises(SpecError) as refused:
        submit(spec, f"127.0.0.1:{free_port()}")  # would be a SubmitError had it tried to connect
    message = str(refused.value)
    assert "output" in message and "restorer.name" in message and "name:" in message
