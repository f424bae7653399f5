"""Kill and resume of PFN training (issue 11, part 2): ``uqkit pfn train`` in a subprocess is SIGKILLed at
random points (fixed seeds) and restarted with ``--resume`` until it finishes; its checkpoint must then
hold exactly the weights, optimiser state and data-stream state of an uninterrupted run, bit for bit.

The killed processes are either fresh interpreters running the CLI (slow tests: the kill delays start
when the worker reports that uqkit is imported, so they land in training, not start-up) or, in the
default test, children forked from this process (starting Python and torch costs ~10 s on a loaded
machine, training the tiny model ~2 s). A kill that lands after the run finished does not count; a kill
before the first checkpoint leaves no ``--out`` file, so the next start is a fresh run. After the last
kill the run is finished, and the reference run made, by the same CLI command in this process (float32
default dtype and one thread, like the CLI). The kill delays are seeded fractions of the reference run's
training time (from its checkpoint), so the first kill lands inside the run on fast and slow machines alike.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from uqkit._io import load_tensors
from uqkit.inference.pfn.pfn import KIND

#: A tiny model trained on the GP prior: about 25 ms a step on one thread, a checkpoint every 3 steps.
TRAIN_ARGS = ["pfn", "train", "--prior", "gp", "--d-model", "16", "--layers", "1", "--buckets", "50",
              "--batch-size", "4", "--seq-len", "16", "--max-context", "10", "--warmup", "2",
              "--checkpoint-every", "3", "--threads", "1", "--seed", "5"]
WORKER = ("import sys, torch; import uqkit.inference.pfn, uqkit.models.pfn_priors; from uqkit.cli import main; "
          "print('ready', flush=True); main(sys.argv[1:], prog_name='uqkit')")


def _progress_classes() -> tuple[type, ...]:
    """The progress-bar classes uqkit uses. Each keeps its own lock once it has made a bar (``tqdm.auto``'s
    class sets ``_lock`` on itself), so a lock set on ``tqdm.std.tqdm`` alone does not reach ``tqdm.auto.tqdm``."""
    import tqdm.auto
    import tqdm.std

    return tqdm.std.tqdm, tqdm.auto.tqdm


@pytest.fixture(autouse=True)
def _process_local_progress_lock(monkeypatch) -> None:
    """tqdm's default lock includes a multiprocessing semaphore that forked children share with this
    process: a child killed while holding it would block every later progress bar here (it did, in a full
    run after other tests had made ``tqdm.auto`` bars). Use a plain thread lock on every progress-bar class
    (forked children replace it with their own, see `_forked_train`)."""
    for cls in _progress_classes():
        monkeypatch.setattr(cls, "_lock", threading.RLock(), raising=False)


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", WORKER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout.readline().strip() == "ready", proc.communicate()[1]
    return proc


def _args(out: Path, steps: int, resume: bool) -> list[str]:
    return [*TRAIN_ARGS, "--steps", str(steps), "--out", str(out), *(["--resume"] if resume else [])]


def _train_here(out: Path, steps: int, *, resume: bool = False) -> None:
    """``uqkit pfn train`` in this process, as the CLI runs it (float32 default dtype)."""
    from uqkit.cli import main

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        main(_args(out, steps, resume), prog_name="uqkit", standalone_mode=False)
    finally:
        torch.set_default_dtype(old)


def _stale_temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def _forked_train(out: Path, steps: int, resume: bool) -> None:
    """Child entry point, with a fresh progress-bar lock (another thread may have held the parent's at the fork)."""
    for cls in _progress_classes():
        cls._lock = threading.RLock()
    _train_here(out, steps, resume=resume)


def _killed_after(out: Path, steps: int, delay: float, *, fresh: bool) -> bool:
    """Train (resuming if ``out`` exists) in another process, SIGKILLed after ``delay`` s; False if it finished first."""
    args = _args(out, steps, out.exists())
    if fresh:
        proc = _start(args)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            return True
        _, err = proc.communicate()
        assert proc.returncode == 0, err
        return False
    child = multiprocessing.get_context("fork").Process(target=_forked_train, args=(out, steps, out.exists()))
    child.start()
    child.join(delay)
    if child.is_alive():
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        return True
    assert child.exitcode == 0
    return False


def _train_with_kills(folder: Path, steps: int, *, seed: int, max_delay: float, num_kills: int,
                      fresh: bool) -> tuple[Path, int, int]:
    """Train to the end, SIGKILLing up to ``num_kills`` times after uniform(0, ``max_delay``) s; returns the
    checkpoint, kills landed, and kills that landed inside a checkpoint write (leaving a temporary file)."""
    out = folder / "killed.safetensors"
    rng = np.random.default_rng(seed)
    landed = in_write = 0
    for _ in range(num_kills):
        if not _killed_after(out, steps, float(rng.uniform(0.0, max_delay)), fresh=fresh):
            break
        landed += 1
        in_write += bool(_stale_temp_files(folder))
    if landed == num_kills:
        _train_here(out, steps, resume=out.exists())
    # The last complete write of the checkpoint deleted what interrupted writes left behind.
    assert _stale_temp_files(folder) == []
    return out, landed, in_write


def _reference(folder: Path, steps: int) -> Path:
    out = folder / "uninterrupted.safetensors"
    _train_here(out, steps)
    return out


def _assert_identical(resumed: Path, reference: Path) -> None:
    got, got_meta = load_tensors(resumed, kind=KIND)
    want, want_meta = load_tensors(reference, kind=KIND)
    assert set(got) == set(want) and any(k.startswith("model.") for k in want) and any(k.startswith("optim.") for k in want)
    differ = [name for name in want if not torch.equal(got[name], want[name])]
    assert not differ, f"tensors differ after kill and resume: {differ[:5]}"

    def progress(meta: dict) -> dict:  # everything but the clock and the command line (which says --resume)
        state = json.loads(meta["train_state"])
        return {k: v for k, v in state.items() if k not in ("wall_time_s", "command")}

    assert progress(got_meta) == progress(want_meta)


def _check(folder: Path, steps: int, *, seed: int, num_kills: int, fresh: bool) -> int:
    reference = _reference(folder, steps)
    duration = json.loads(load_tensors(reference, kind=KIND)[1]["train_state"])["wall_time_s"]
    resumed, landed, in_write = _train_with_kills(folder, steps, seed=seed, max_delay=duration, num_kills=num_kills,
                                                  fresh=fresh)
    _assert_identical(resumed, reference)
    print(f"\npfn train ({steps} steps): {landed} kills landed (seed {seed}; {in_write} inside a checkpoint write), "
          "weights identical to the uninterrupted run")
    return landed


def test_pfn_training_survives_a_kill(tmp_path) -> None:
    assert _check(tmp_path, 60, seed=0, num_kills=2, fresh=False) >= 1


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_pfn_training_survives_repeated_kills(tmp_path, seed: int) -> None:
    landed = _check(tmp_path, 200, seed=seed, num_kills=4, fresh=True)
    assert landed >= 1, "no kill landed inside the run; lengthen the run or shorten the delays"
