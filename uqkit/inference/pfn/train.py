"""PFN training on a stream of prior datasets: Adam, linear warm-up then cosine decay, checkpoints, resume.

Each step draws ``batch_size`` fresh datasets of ``seq_len`` points from the prior simulator and one
context size ``p`` for the whole batch (by default weights ``∝ 1 / (seq_len - p)``, so that every context
size gets a similar number of query losses, as in the PFN paper); points ``< p`` are the context and the
rest are queries scored by the prior-data NLL. A checkpoint holds the model, the optimiser state and
the data generator's state, so a resumed run reproduces an uninterrupted one bit for bit. A run may
also start from another checkpoint's weights and borders (``init_from``: fine-tuning with a fresh
optimiser and schedule).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from uqkit._io import load_tensors
from uqkit.inference.pfn.bar import BarDistribution, borders_from_samples
from uqkit.inference.pfn.model import PFNConfig, PFNTransformer
from uqkit.inference.pfn.pfn import KIND, PFN, write_checkpoint
from uqkit.models.pfn_priors import PriorSimulator


@dataclass(frozen=True)
class TrainConfig:
    """Training settings.

    Attributes:
        steps: optimiser steps in total (the cosine schedule ends here).
        batch_size: datasets per step.
        seq_len: points per dataset (context + queries); must exceed ``max_context``.
        max_context: largest context size trained on (and accepted by `PFN.predict`).
        lr: peak learning rate; warmup: linear warm-up steps.
        grad_clip: maximum gradient norm.
        checkpoint_every: steps between checkpoints (and at the end).
        border_datasets: prior datasets (of ``seq_len`` points) used to place the bucket borders.
        seed: seed of the data generator (and of the initial weights).
        context_power: context sizes are drawn with weights ``∝ (seq_len - p) ** -context_power``:
            1 (the paper's) gives every size a similar number of query losses, 0 every size the same
            number of steps (more query losses at small contexts).
        data_shards: the batch is drawn in this many equal shards, shard r from its own generator
            (shard 0 from ``seed``, shard r > 0 from a seed derived from ``(seed, r)``). Under
            ``torchrun --nproc_per_node=W`` it must equal W and rank r draws shard r; one process
            with ``data_shards=W`` sees the same global batches (the same loss curve, to float
            round-off).
    """

    steps: int
    batch_size: int = 16
    seq_len: int = 128
    max_context: int = 100
    lr: float = 1e-3
    warmup: int = 200
    grad_clip: float = 1.0
    checkpoint_every: int = 250
    border_datasets: int = 1000
    seed: int = 0
    data_shards: int = 1
    context_power: float = 1.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1 or self.data_shards < 1:
            raise ValueError("steps, batch_size, checkpoint_every, data_shards: expected positive integers")
        if self.batch_size % self.data_shards:
            raise ValueError(f"batch_size: expected a multiple of data_shards = {self.data_shards}, got {self.batch_size}")
        if not 0 < self.max_context < self.seq_len:
            raise ValueError(f"max_context: expected 0 < max_context < seq_len = {self.seq_len}, got {self.max_context}")


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``cfg.warmup`` steps, then cosine decay to 0 at ``cfg.steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def context_weights(cfg: TrainConfig) -> Tensor:
    """``[max_context + 1]`` probabilities of each context size ``p``, ``∝ (seq_len - p) ** -context_power``."""
    w = (cfg.seq_len - torch.arange(cfg.max_context + 1, dtype=torch.float64)) ** -cfg.context_power
    return w / w.sum()


def train_pfn(simulator: PriorSimulator, out: str | Path, train: TrainConfig, model: PFNConfig | None = None, *,
              resume: bool = False, init_from: str | Path | None = None, num_buckets: int = 1000, command: str = "",
              progress: bool = True) -> PFN:
    """Train a PFN on ``simulator``'s prior, writing checkpoints to ``out``; returns the trained PFN.

    Args:
        simulator: the prior (`uqkit.models.pfn_priors`).
        out: checkpoint path (``.safetensors``); rewritten every ``train.checkpoint_every`` steps.
        train: training settings; model: transformer sizes (default `PFNConfig` with the prior's
            input dimension and ``num_buckets`` outputs, or the class count for classification).
        resume: continue from the checkpoint at ``out`` (same prior and settings required).
        init_from: start from this checkpoint's weights and borders (same prior and model sizes
            required) with a fresh optimiser and schedule: fine-tuning. Ignored when resuming.
        num_buckets: bar-distribution buckets (regression).
        command: the command line, recorded in the checkpoint.
        progress: show a tqdm progress bar.
    """
    from tqdm.auto import tqdm

    classification = simulator.task == "classification"
    if model is None:
        outputs = simulator.num_classes if classification else num_buckets
        model = PFNConfig(max_input_dim=simulator.input_dims[1], num_outputs=outputs)
    prior_info = {**simulator.info(), "max_context": train.max_context}
    group = _DataParallel.start(train)
    shards = group.my_shards(train)
    with torch.random.fork_rng(devices=[]):  # initial weights: nn.Module init reads the global generator
        torch.manual_seed(train.seed)
        net = PFNTransformer(model).float()
    optimizer = torch.optim.Adam(net.parameters(), lr=train.lr)
    state = {"step": 0, "wall_time_s": 0.0, "loss_ema": None, "train_config": asdict(train), "command": command}
    losses: list[float] = []
    borders = None
    if resume:
        borders, state, losses = _restore(out, net, optimizer, shards, prior_info, model, train)
    elif init_from is not None:
        borders = _initialise(init_from, net, prior_info, model)
        state["init_from"] = str(init_from)
    elif not classification and group.rank == 0:
        _, y = simulator.sample(train.border_datasets, train.seq_len, generator=shards[0])
        borders = borders_from_samples(y, model.num_outputs)
    if not classification:
        borders = group.broadcast(borders, model.num_outputs + 1)
    trained = group.wrap(net)
    weights = context_weights(train)
    lo, hi = simulator.input_dims
    shard_size = train.batch_size // train.data_shards
    start, t0 = state["step"], time.perf_counter() - state["wall_time_s"]
    bar = tqdm(range(start, train.steps), initial=start, total=train.steps, disable=not progress or group.rank > 0,
               desc="pfn train")
    for step in bar:
        if group.rank == 0:  # context size and input dimension of this step, shared by all shards
            p = int(torch.multinomial(weights, 1, generator=shards[0]))
            d = int(torch.randint(lo, hi + 1, (), generator=shards[0]))
        p, d = group.broadcast_ints(p if group.rank == 0 else 0, d if group.rank == 0 else 0)
        batches = [simulator.sample(shard_size, train.seq_len, generator=g, input_dim=d) for g in shards]
        x, y = (torch.cat(t).float() for t in zip(*batches))
        logits = trained(x[:, :p], y[:, :p], x[:, p:])
        if classification:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[:, p:].reshape(-1).long())
        else:
            loss = -BarDistribution(logits, borders.float()).log_prob(y[:, p:]).mean()
        for param_group in optimizer.param_groups:
            param_group["lr"] = learning_rate(step, train)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), train.grad_clip)
        optimizer.step()
        value = group.mean(loss.detach())
        losses.append(value)
        ema = state["loss_ema"]
        state["loss_ema"] = value if ema is None else 0.99 * ema + 0.01 * value
        state["step"] = step + 1
        bar.set_postfix(loss=f"{state['loss_ema']:.4f}", p=p)
        if state["step"] % train.checkpoint_every == 0 or state["step"] == train.steps:
            state["wall_time_s"] = time.perf_counter() - t0
            generator_states = group.gather_states([g.get_state() for g in shards])
            if group.rank == 0:
                _save(out, net, optimizer, generator_states, borders, prior_info, model, state, losses)
    group.finish()
    pfn = PFN(net.eval(), borders, prior_info)
    pfn.training_info = _training_info(state)
    pfn.loss_curve = torch.tensor(losses, dtype=torch.float64)
    return pfn


class _DataParallel:
    """The process group of a ``torchrun`` launch (DistributedDataParallel), or a single process.

    Rank r draws shard r; rank 0 draws the per-step context size and input dimension (and the bucket
    borders) and broadcasts them, so every rank trains on the same step of the same global batch.
    """

    def __init__(self, rank: int, world_size: int, started_here: bool) -> None:
        self.rank, self.world_size, self.started_here = rank, world_size, started_here

    @classmethod
    def start(cls, train: TrainConfig) -> _DataParallel:
        import os

        import torch.distributed as dist

        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls(0, 1, False)
        started_here = not dist.is_initialized()
        if started_here:
            dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        if train.data_shards != world_size:
            raise ValueError(f"data_shards: under torchrun it must equal the number of processes ({world_size}), "
                             f"got {train.data_shards}")
        return cls(dist.get_rank(), world_size, started_here)

    def my_shards(self, train: TrainConfig) -> list[torch.Generator]:
        """The generators of the shards this process draws (all of them in a single process)."""
        ranks = range(train.data_shards) if self.world_size == 1 else [self.rank]
        return [torch.Generator().manual_seed(_shard_seed(train.seed, r)) for r in ranks]

    def wrap(self, net: torch.nn.Module) -> torch.nn.Module:
        if self.world_size == 1:
            return net
        return torch.nn.parallel.DistributedDataParallel(net)

    def broadcast(self, tensor: Tensor | None, size: int) -> Tensor:
        if self.world_size == 1:
            return tensor
        import torch.distributed as dist

        buffer = tensor.to(torch.float64) if self.rank == 0 else torch.empty(size, dtype=torch.float64)
        dist.broadcast(buffer, src=0)
        return buffer

    def broadcast_ints(self, *values: int) -> list[int]:
        if self.world_size == 1:
            return list(values)
        import torch.distributed as dist

        buffer = torch.tensor(values, dtype=torch.int64)
        dist.broadcast(buffer, src=0)
        return buffer.tolist()

    def mean(self, value: Tensor) -> float:
        if self.world_size == 1:
            return float(value)
        import torch.distributed as dist

        buffer = value.to(torch.float64).reshape(1)
        dist.all_reduce(buffer)
        return float(buffer) / self.world_size

    def gather_states(self, states: list[Tensor]) -> list[Tensor]:
        """Every shard's generator state, in shard order (on every rank)."""
        if self.world_size == 1:
            return states
        import torch.distributed as dist

        gathered = [torch.empty_like(states[0]) for _ in range(self.world_size)]
        dist.all_gather(gathered, states[0])
        return gathered

    def finish(self) -> None:
        if self.started_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def _shard_seed(seed: int, shard: int) -> int:
    """Shard 0 uses ``seed`` itself (so one shard is the plain single-process stream)."""
    if shard == 0:
        return seed
    return int(np.random.SeedSequence([seed, shard]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _training_info(state: dict) -> dict:
    info = {"command": state["command"], "steps": state["step"], "wall_time_s": round(state["wall_time_s"], 1),
            "final_loss_ema": state["loss_ema"], "train_config": state["train_config"]}
    if "init_from" in state:
        info["init_from"] = state["init_from"]
    return info


def _initialise(path: str | Path, net: PFNTransformer, prior_info: dict, model: PFNConfig) -> Tensor | None:
    """Copy the weights of the checkpoint at ``path`` into ``net``; returns its borders."""
    source = PFN.load(path)
    for what, saved, now in (("prior", source.prior_info, prior_info),
                             ("model config", source.net.config.to_dict(), model.to_dict())):
        if saved != json.loads(json.dumps(now)):
            raise ValueError(f"init_from: the checkpoint's {what} {saved} differs from this run's {now}")
    net.load_state_dict(source.net.state_dict())
    return source.borders


def _save(out: str | Path, net: PFNTransformer, optimizer: torch.optim.Optimizer, generator_states: list[Tensor],
          borders: Tensor | None, prior_info: dict, model: PFNConfig, state: dict, losses: list[float]) -> None:
    extra = {f"rng_state.{r}": s for r, s in enumerate(generator_states)}
    extra["loss_curve"] = torch.tensor(losses, dtype=torch.float64)
    for i, s in optimizer.state_dict()["state"].items():
        extra.update({f"optim.{i}.{name}": torch.as_tensor(v) for name, v in s.items()})
    write_checkpoint(out, net, borders, prior_info, model, training=_training_info(state),
                     extra_tensors=extra, extra_meta={"train_state": json.dumps(state)})


def _restore(out: str | Path, net: PFNTransformer, optimizer: torch.optim.Optimizer, shards: list[torch.Generator],
             prior_info: dict, model: PFNConfig, train: TrainConfig) -> tuple[Tensor | None, dict, list[float]]:
    tensors, meta = load_tensors(out, kind=KIND)
    if "train_state" not in meta:
        raise ValueError(f"out: {out} holds no training state (a shipped checkpoint cannot be resumed)")
    state = json.loads(meta["train_state"])
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    state["train_config"] = {**defaults, **state["train_config"]}  # runs saved before a setting existed
    for what, saved, now in (("prior", json.loads(meta["prior_info"]), prior_info),
                             ("model config", json.loads(meta["config"]), model.to_dict()),
                             ("training config", state["train_config"], asdict(train))):
        if saved != json.loads(json.dumps(now)):
            raise ValueError(f"resume: the checkpoint's {what} {saved} differs from this run's {now}")
    net.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    opt_state = optimizer.state_dict()
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, i, name = key.split(".")
            opt_state["state"].setdefault(int(i), {})[name] = v
    optimizer.load_state_dict(opt_state)
    first = 0 if len(shards) == train.data_shards else _rank()
    for r, generator in enumerate(shards, start=first):
        generator.set_state(tensors[f"rng_state.{r}"])
    return tensors.get("borders"), state, tensors["loss_curve"].tolist()


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0
