"""PFN training under torchrun (2 processes, gloo) equals one process drawing the same two data shards."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from uqkit._io import load_tensors
from uqkit.inference.pfn.pfn import KIND

TINY = ["pfn", "train", "--prior", "gp", "--steps", "4", "--batch-size", "4", "--seq-len", "16", "--max-context", "8",
        "--d-model", "16", "--layers", "1", "--buckets", "20", "--checkpoint-every", "2", "--warmup", "2"]


def _uqkit_script() -> str:
    script = shutil.which("uqkit", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("the uqkit console script is not installed next to this Python")
    return script


def _run(command: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]


def test_two_process_ddp_matches_one_process_with_the_same_shards(tmp_path):
    script = _uqkit_script()
    single, ddp = tmp_path / "single.safetensors", tmp_path / "ddp.safetensors"
    _run([sys.executable, script, *TINY, "--data-shards", "2", "--out", str(single)])
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script, *TINY,
          "--out", str(ddp)])
    one, _ = load_tensors(single, kind=KIND)
    two, _ = load_tensors(ddp, kind=KIND)
    assert one["loss_curve"].shape == (4,)
    torch.testing.assert_close(two["loss_curve"], one["loss_curve"], rtol=1e-5, atol=1e-6)
    for name in (k for k in one if k.startswith("model.")):
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    for r in (0, 1):  # both shards' generators are saved, so either run can resume
        assert torch.equal(two[f"rng_state.{r}"], one[f"rng_state.{r}"])


def test_data_shards_must_divide_the_batch():
    from uqkit.inference.pfn import TrainConfig

    with pytest.raises(ValueError, match="batch_size: expected a multiple of data_shards = 3"):
        TrainConfig(steps=1, batch_size=4, data_shards=3)
