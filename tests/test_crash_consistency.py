"""Crash consistency of ``fastdino pretrain`` (issue 12): nothing a user owns is lost.

- SIGKILL at seeded random moments, once inside a checkpoint write (``tests/_kill_in_save.py``
  wraps the CLI and kills the process half-way through its N-th save), resuming each time: the
  final teacher equals an uninterrupted run's bit for bit (CPU).
- SIGTERM to the whole process group (as Slurm / Kubernetes send it, data-loader workers
  included): a clean checkpoint at the step in progress, exit 0, same final weights; meanwhile a
  second ``pretrain`` on the run directory refuses with one line.
- Run-directory lock: refuses a live owner, takes over a dead one, a recycled PID and a foreign
  host's lock whose heartbeat stopped; two processes racing for a stale lock: exactly one wins;
  a killed trainer's forked worker does not keep the lock; a full disk while writing it.
- Disk full (injected ENOSPC; a real tiny tmpfs where ``mount`` works) and a read-only run
  directory: one-line error, exit 2, the previous checkpoint intact, no temp files left.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastdino_cli import checkpoint as ckpt_io
from fastdino_cli import rundir as rd
from fastdino_cli.cli import main
from fastdino_cli.config import config_to_yaml, resolve_config
from fastdino_cli.train.loop import pretrain

ROOT = Path(__file__).resolve().parents[1]
HEAD = "{n_prototypes: 32, bottleneck_dim: 16, hidden_dim: 32, nlayers: 2}"
STAGES = (
    "[{name: low, end: 0.5, global_crops_size: 16, local_crops_size: 8},"
    " {name: high, end: 1.0, global_crops_size: 24, local_crops_size: 16, restart: true,"
    " warmup_epochs: 0.5, noise_patching: {enabled: true, max_sigma: 0.2}}]"
)
EPOCHS, EPOCH_LENGTH = 8, 2
TOTAL = EPOCHS * EPOCH_LENGTH

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def overrides(out: Path, data: Path, period: int = 2) -> list[str]:
    return [
        "model.arch=vit_tiny",
        "model.embed_dim=32",
        "model.depth=2",
        "model.num_heads=2",
        "model.patch_size=8",
        "model.img_size=16",
        "model.drop_path_rate=0.1",
        f"data.train={data}",
        "data.num_workers=0",
        "crops.local_crops_number=2",
        f"dino.head={HEAD}",
        f"ibot.head={HEAD}",
        f"optim.epochs={EPOCHS}",
        "optim.warmup_epochs=1",
        "optim.freeze_last_layer_epochs=0.5",
        "teacher.warmup_temp_epochs=1",
        f"train.epoch_length={EPOCH_LENGTH}",
        "train.batch_size_per_gpu=4",
        f"train.checkpoint_period={period}",
        "train.keep_checkpoints=1",
        "train.log_period=1",
        f"train.output_dir={out}",
        f"curriculum.stages={STAGES}",
    ]


def write_config(path: Path, out: Path, data: Path, period: int = 2):
    cfg = resolve_config(None, None, overrides(out, data, period))
    path.write_text(config_to_yaml(cfg))
    return cfg


@pytest.fixture(scope="module")
def reference(tmp_path_factory, demo_data):
    """The uninterrupted run's final teacher (in-process)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    res = pretrain(resolve_config(None, None, overrides(out, demo_data.train)), progress=False)
    assert res.steps_done == TOTAL
    return ckpt_io.load(out / "final.pt")["teacher"]


def spawn(
    cfg_path: Path,
    log: Path,
    *extra: str,
    env: dict | None = None,
    group: bool = False,
    kill_in_save: int | None = None,
    pause_at: int | None = None,
):
    """``fastdino pretrain --config CFG`` in a child process. With ``kill_in_save`` it is
    SIGKILLed during its ``kill_in_save``-th checkpoint save (``tests/_kill_in_save.py``). With
    ``pause_at`` it runs through ``tests/_pausing_pretrain.py``: once ``pause_at`` steps are
    logged it writes ``gate(log)/paused`` and waits for a signal, so that it can never run past
    that step before the test has acted, however fast the machine is."""
    if kill_in_save is not None:
        cli = [str(ROOT / "tests" / "_kill_in_save.py"), str(kill_in_save)]
    elif pause_at is not None:
        cli = [str(ROOT / "tests" / "_pausing_pretrain.py"), str(pause_at), str(gate(log))]
    else:
        cli = ["-m", "fastdino_cli"]
    cmd = [sys.executable, *cli, "pretrain", "--config", str(cfg_path), *extra]
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **(env or {})),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=group,
    )


def gate(log: Path) -> Path:
    """Where a pausing child (``spawn(pause_at=...)``) and its test meet."""
    return log.with_suffix(".gate")


def logged(out: Path) -> int:
    try:
        return len((out / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def saved_step(out: Path) -> int:
    if not (out / "checkpoint.pt").exists():
        return 0
    return int(ckpt_io.load(out / "checkpoint.pt")["train_state"]["step"])


def wait_until(cond, proc, log: Path, timeout: float = 600.0) -> None:
    t0 = time.time()
    while not cond():
        if proc.poll() is not None:
            return
        assert time.time() - t0 < timeout, log.read_text()[-2000:]
        time.sleep(0.02)


def temp_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_sigkill_at_random_moments_then_resume_is_bitwise_identical(tmp_path, demo_data, reference):
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "cfg.yaml", out, demo_data.train)
    rng = random.Random(1234)
    for attempt in range(4):
        start = saved_step(out)
        log = tmp_path / f"kill{attempt}.log"
        if attempt == 1:  # die inside the 2nd checkpoint write, temp file half written
            proc = spawn(tmp_path / "cfg.yaml", log, kill_in_save=2)
            assert proc.wait(timeout=600) == -signal.SIGKILL, log.read_text()[-2000:]
            partial = [p for p in temp_files(out) if p.name.startswith(".checkpoint.pt.")]
            assert len(partial) == 1 and partial[0].stat().st_size > 0
            assert saved_step(out) == start + 2  # the 1st save of this attempt, intact
            continue
        new_lines = rng.randint(0, 2)  # 0: may die while importing or building the model
        # killed at a random moment up to 2 steps later: the run waits there, never finishes
        proc = spawn(tmp_path / "cfg.yaml", log, pause_at=start + new_lines + 2)
        wait_until(lambda n=new_lines, s=start: logged(out) >= s + n, proc, log)
        time.sleep(rng.uniform(0.0, 0.1))
        assert proc.poll() is None, log.read_text()[-2000:]
        proc.kill()
        proc.wait()
    assert (out / ".lock").exists()  # left by a SIGKILLed owner: must not block
    assert saved_step(out) < TOTAL and not (out / "final.pt").exists()
    resume_at = saved_step(out)
    res = pretrain(cfg, progress=False)
    assert (
        res.resumed_from == (resume_at or None)
        and res.steps_done == TOTAL
        and not (out / ".lock").exists()
    )
    assert not temp_files(out)  # the half-written file of the killed save was cleaned up
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(TOTAL))
    assert_same(ckpt_io.load(out / "final.pt")["teacher"], reference)


def test_sigterm_to_the_job_checkpoints_and_a_second_run_is_refused(
    tmp_path, demo_data, reference, capsys
):
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "cfg.yaml", out, demo_data.train, period=100)
    rng = random.Random(99)
    for attempt in range(2):
        start = saved_step(out)
        log = tmp_path / f"term{attempt}.log"
        # one data-loader worker: the signal reaches it too, as on a cluster
        target = start + rng.randint(1, 3)
        # the run waits after step `target` until the SIGTERM has reached its handler
        proc = spawn(tmp_path / "cfg.yaml", log, "data.num_workers=1", group=True, pause_at=target)
        wait_until(lambda g=gate(log): (g / "paused").exists(), proc, log)
        assert proc.poll() is None and logged(out) == target, log.read_text()[-2000:]
        if attempt == 0:  # a second process on the same run directory refuses
            with pytest.raises(SystemExit) as e:
                main(["pretrain", "--config", str(tmp_path / "cfg.yaml")])
            err = capsys.readouterr().err
            assert e.value.code == 2 and err.count("\n") == 1, err
            assert "in use by another fastdino process" in err and f"pid {proc.pid}" in err
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=300) == 0, log.read_text()[-2000:]
        text = log.read_text()
        assert "sigterm:" in text and "Traceback" not in text, text[-2000:]
        # the step in progress finished and was checkpointed, although the period is 100
        assert saved_step(out) == logged(out) and start < saved_step(out) < TOTAL
        assert not (out / ".lock").exists() and not (out / "final.pt").exists()
    res = pretrain(cfg, progress=False)
    assert res.steps_done == TOTAL
    assert_same(ckpt_io.load(out / "final.pt")["teacher"], reference)


# --------------------------------------------------------------------------------------------
# the run-directory lock
# --------------------------------------------------------------------------------------------


def test_lock_takes_over_dead_recycled_and_silent_foreign_owners(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lock = run / ".lock"
    live = os.getppid()  # a process that outlives this test
    # live owner on this host, with its true start time: refused, one line naming it
    lock.write_text(f"{live} {socket.gethostname()} {rd._start_time(live)}")
    with pytest.raises(rd.RunLocked, match=f"in use by another fastdino process \\(pid {live}\\)"):
        rd.RunLock(run).__enter__()
    # the same PID with another start time: a recycled PID, the owner is gone
    lock.write_text(f"{live} {socket.gethostname()} 1")
    with rd.RunLock(run) as held:
        assert lock.read_text().split()[0] == str(os.getpid()) and held.held
    assert not lock.exists()
    # a dead PID (a finished child)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(f"{dead.pid} {socket.gethostname()}")
    with rd.RunLock(run):
        pass
    # another host: trusted while its heartbeat is fresh, taken over once it is stale
    lock.write_text("4242 other-node-17 12345")
    with pytest.raises(rd.RunLocked, match="pid 4242 on host other-node-17"):
        rd.RunLock(run).__enter__()
    old = time.time() - rd.RunLock.FOREIGN_STALE_S - 5
    os.utime(lock, (old, old))
    with rd.RunLock(run):
        pass


CONTENDER = """
import os, socket, sys, time
from pathlib import Path
from fastdino_cli import rundir as rd

run, me, other = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
base = run.parent
def wait_for(*names):  # a file barrier: no timing involved
    while not any((base / n).exists() for n in names):
        time.sleep(0.001)

real = rd.RunLock._live_owner
def inspecting(self, *args):
    # both contenders meet here when both could inspect the stale lock at once (the old
    # "inspect, unlink, create" takeover let both win from this point); with the flock only
    # the holder gets here, and goes on once the other has lost
    (base / f"inspect_{me}").touch()
    wait_for(f"inspect_{other}", f"result_{other}")
    return real(self, *args)
rd.RunLock._live_owner = inspecting

(base / f"ready_{me}").touch()
wait_for("go")
try:
    lock = rd.RunLock(run).__enter__()
    result = f"won {os.getpid()}"
except rd.RunLocked as e:
    lock, result = None, f"lost {e}"
(base / f"result_{me}.tmp").write_text(result)
(base / f"result_{me}.tmp").rename(base / f"result_{me}")
if lock is not None:
    wait_for("release")
    lock.__exit__()
"""


def _wait_for_files(paths: list[Path], procs: list[subprocess.Popen]) -> None:
    while not all(p.exists() for p in paths):
        assert all(proc.poll() is None for proc in procs), [p.poll() for p in procs]
        time.sleep(0.01)


def test_two_processes_taking_over_a_stale_lock_exactly_one_wins(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / ".lock").write_text(f"{dead.pid} {socket.gethostname()} 1")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen([sys.executable, "-c", CONTENDER, str(run), me, other], env=env)
        for me, other in (("a", "b"), ("b", "a"))
    ]
    try:
        _wait_for_files([tmp_path / "ready_a", tmp_path / "ready_b"], procs)
        (tmp_path / "go").touch()
        _wait_for_files([tmp_path / "result_a", tmp_path / "result_b"], procs)
        results = sorted((tmp_path / f"result_{x}").read_text() for x in "ab")
        assert [r.split()[0] for r in results] == ["lost", "won"], results
        winner = results[1].split()[1]
        # the loser names the winner, or says it is taking over (not yet written its pid)
        assert "in use by another fastdino process (" in results[0]
        assert f"(pid {winner})" in results[0] or "taking over a stale lock" in results[0]
        assert (run / ".lock").read_text().split()[0] == winner
    finally:
        (tmp_path / "release").touch()
        for proc in procs:
            proc.wait(timeout=120)
    assert not (run / ".lock").exists()


HOLDER = """
import multiprocessing as mp, os, signal, sys, time
from pathlib import Path
from fastdino_cli import rundir as rd

def child(base):  # a data-loader worker, forked while the lock is held
    (base / "child_ready").touch()
    while not (base / "child_exit").exists():
        time.sleep(0.01)

run = Path(sys.argv[1])
rd.RunLock(run).__enter__()
proc = mp.get_context("fork").Process(target=child, args=(run.parent,))
proc.start()
while not (run.parent / "child_ready").exists():
    time.sleep(0.01)
(run.parent / "worker_pid").write_text(str(proc.pid))
os.kill(os.getpid(), signal.SIGKILL)  # the trainer dies; its worker lives on for a while
"""


def test_a_killed_trainers_forked_worker_does_not_keep_its_lock(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.run(  # no pipes: the orphaned worker would hold them open
        [sys.executable, "-c", HOLDER, str(run)],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.DEVNULL,
        timeout=300,
    )
    assert holder.returncode == -signal.SIGKILL
    worker = int((tmp_path / "worker_pid").read_text())
    try:
        os.kill(worker, 0)  # still alive, and holding a copy of the trainer's descriptors
        with rd.RunLock(run) as held:  # taken over at once: the worker closed the lock's copy
            assert held.held and (run / ".lock").read_text().split()[0] == str(os.getpid())
    finally:
        (tmp_path / "child_exit").touch()


def test_disk_full_while_writing_the_lock_is_one_line(tmp_path, demo_data, monkeypatch, capsys):
    out = tmp_path / "run"
    write_config(tmp_path / "cfg.yaml", out, demo_data.train)

    def pwrite(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", pwrite)
    code, err = _run_cli(capsys, ["pretrain", "--config", str(tmp_path / "cfg.yaml")])
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"cannot write the lock file {out / '.lock'} (No space left on device)" in err
    assert "free space" in err and not (out / ".lock").exists()


def test_lock_heartbeat_keeps_the_lock_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(rd.RunLock, "HEARTBEAT_S", 0.05)
    with rd.RunLock(tmp_path) as held:
        old = time.time() - 1000
        os.utime(held.path, (old, old))
        # wait for the heartbeat thread to touch it (no fixed sleep: it may be slow to run)
        t0 = time.time()
        while held.path.stat().st_mtime < old + 500:
            assert time.time() - t0 < 600, "the heartbeat never touched the lock"
            time.sleep(0.01)


# --------------------------------------------------------------------------------------------
# disk full and unwritable output
# --------------------------------------------------------------------------------------------


def _run_cli(capsys, args: list[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code, capsys.readouterr().err


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(
    tmp_path, demo_data, monkeypatch, capsys
):
    out = tmp_path / "run"
    write_config(tmp_path / "cfg.yaml", out, demo_data.train, period=1)
    real_fdopen = os.fdopen
    opened = {"n": 0}

    class FillsUp:
        """A checkpoint file whose write hits ENOSPC after 20 kB, inside torch.save."""

        def __init__(self, f):
            self.f = f

        def write(self, b):
            if self.f.tell() + len(b) > 20_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fdopen(fd, mode="r", *a, **k):  # the 3rd checkpoint write runs out of space
        f = real_fdopen(fd, mode, *a, **k)
        if mode == "wb":
            opened["n"] += 1
            if opened["n"] == 3:
                return FillsUp(f)
        return f

    monkeypatch.setattr(os, "fdopen", fdopen)  # what fileio.atomic_write opens
    code, err = _run_cli(capsys, ["pretrain", "--config", str(tmp_path / "cfg.yaml")])
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert str(out / "checkpoint.pt") in err and "No space left on device" in err
    assert "previous file is intact" in err and "run the same command again" in err
    assert saved_step(out) == 2  # the checkpoint of step 2 survived the failed write of step 3
    assert not temp_files(out) and not (out / ".lock").exists()
    monkeypatch.undo()
    again = [*overrides(out, demo_data.train, period=1), "train.max_steps=3"]
    res = pretrain(resolve_config(None, None, again))
    assert res.resumed_from == 2 and res.steps_done == 3


@pytest.fixture
def tmpfs(tmp_path):
    """A real 4 MiB tmpfs where this process may mount one (root in a container), else skip."""
    where = tmp_path / "tmpfs"
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
                       capture_output=True)  # fmt: skip
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here; disk full is covered by the injected ENOSPC")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_real_full_filesystem_and_read_only_run_dir(tmpfs, tmp_path, demo_data, capsys):
    out = tmpfs / "run"
    write_config(tmp_path / "cfg.yaml", out, demo_data.train, period=1)
    # fill the tmpfs so that one checkpoint fits but not a second one beside it
    probe = tmp_path / "size_probe"
    pretrain(resolve_config(None, None, [*overrides(probe, demo_data.train), "train.max_steps=1"]))
    size = (probe / "checkpoint.pt").stat().st_size
    assert 2 * size < 4 << 20, "the tiny checkpoint should fit twice in 4 MiB"
    (tmpfs / "ballast").write_bytes(b"\0" * ((4 << 20) - int(1.6 * size) - 64 * 1024))
    code, err = _run_cli(capsys, ["pretrain", "--config", str(tmp_path / "cfg.yaml")])
    assert code == 2 and err.count("\n") == 1 and "No space left on device" in err, err
    good = saved_step(out)
    assert good >= 1 and not temp_files(out) and not (out / ".lock").exists()
    # read-only: the run directory cannot even be locked
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    code, err = _run_cli(capsys, ["pretrain", "--config", str(tmp_path / "cfg.yaml")])
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert str(out) in err and "Read-only file system" in err and "writable" in err
    assert saved_step(out) == good


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_run_dir_for_a_normal_user(tmp_path, demo_data, capsys):
    out = tmp_path / "run"
    out.mkdir()
    write_config(tmp_path / "cfg.yaml", out, demo_data.train)
    out.chmod(0o555)
    try:
        code, err = _run_cli(capsys, ["pretrain", "--config", str(tmp_path / "cfg.yaml")])
    finally:
        out.chmod(0o755)
    assert code == 2 and err.count("\n") == 1 and "Permission denied" in err, err


def test_disk_full_outside_a_checkpoint_write_is_one_line_too(
    tmp_path, demo_data, monkeypatch, capsys
):
    """E.g. the periodic copy in checkpoints/ (a real copy where hard links are not supported)."""
    out = tmp_path / "run"
    write_config(tmp_path / "cfg.yaml", out, demo_data.train, period=1)

    def full(run_dir, latest, step, keep):
        raise OSError(errno.ENOSPC, "No space left on device", str(run_dir / "checkpoints"))

    monkeypatch.setattr(rd, "rotate_checkpoint", full)
    code, err = _run_cli(capsys, ["pretrain", "--config", str(tmp_path / "cfg.yaml")])
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"cannot write {out / 'checkpoints'}: No space left on device" in err
    assert f"the last checkpoint {out / 'checkpoint.pt'} is intact" in err
    assert saved_step(out) == 1 and not (out / ".lock").exists()
