"""Many processes: FSDP2 sharding of ``SSLMetaArch``, full-state checkpoints, rank helpers.

Why fastdino calls ``fully_shard`` itself instead of Accelerate's FSDP2 plugin:

* the plugin is silently ignored on CPU (Accelerate only switches to FSDP for accelerator
  devices), so the code that runs on 8 GPUs could never be exercised by the 2-process gloo test;
  calling ``fully_shard`` directly makes CPU/gloo and GPU/NCCL run the *same* sharding code;
* the plugin applies one mixed-precision policy to everything, while the reference reduces the
  heads' gradients in fp32;
* the teacher must reshard after its forward (see below), which the plugin's root heuristic
  does not do for the teacher's blocks.

Accelerate still launches the processes (``accelerate launch``), initialises the process group
and picks the device; the model is simply not handed to ``accelerator.prepare`` when sharded.

Layout (``apply_fsdp``)::

    for teacher and student:  fully_shard(block) for every transformer block
                              fully_shard(head)  for dino_head (and ibot_head), reduce in fp32
    fully_shard(root)         patch embedding, tokens, pos-embed, final norms of both backbones

Pitfalls this layout avoids (reference/ecosystem.md section 2.2, measured there):

1. A teacher that only runs forward keeps the unsharded copy of a unit whose
   ``reshard_after_forward`` is False, so the next forward would reuse stale weights after the
   in-place EMA (6.4e-4 drift after 3 steps). Every teacher unit reshards after forward; the
   shared root is resharded by the student's backward (and explicitly before state-dict reads).
2. Student and teacher share one root and identical dim-0 sharding, so the EMA runs on local
   shards with ``torch._foreach_*`` and needs no communication (``SSLMetaArch.update_teacher``).
3. Blocks are called through ``forward_packed`` (not ``__call__``): that method is registered with
   ``register_fsdp_forward_method`` so its parameters are all-gathered.
4. Full tensors come from ``get_model_state_dict(full_state_dict=True)``, never from
   ``DTensor.from_local`` (uneven padding deadlocks).

Checkpoints keep ONE format whatever the number of processes: student/teacher state dicts of
full tensors, and the optimizer state as the plain ``torch.optim`` ``state_dict`` of the unsharded
optimizer (integer parameter ids in group order). A run can therefore resume on a different
number of processes, or in one process, from the same file.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fastdino_cli.checkpoint import load_state_dict_strict
from fastdino_cli.config import Config, DistributedConfig, restate_stored_run
from fastdino_cli.errors import ConfigError

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------------------------------
# Process group facts
# --------------------------------------------------------------------------------------------


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if not is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def fsdp_enabled(dist_cfg: DistributedConfig, world: int) -> bool:
    """Shard with FSDP2 when several processes run and ``distributed.fsdp`` is on.

    With ``distributed.fsdp=false`` several processes run DDP through ``accelerator.prepare``.
    An Accelerate config with ``distributed_type: FSDP`` is accepted (fastdino shards the model
    itself; the config's ``fsdp_*`` fields are not used), but not together with
    ``distributed.fsdp=false``: Accelerate would then wrap the model with its own FSDP plugin,
    whose root heuristic leaves teacher parameters stale.
    """
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not dist_cfg.fsdp:
        raise ConfigError(
            "the accelerate config asks for FSDP but distributed.fsdp=false; launch with a "
            "MULTI_GPU accelerate config (fastdino shards itself) or set distributed.fsdp=true"
        )
    return world > 1 and dist_cfg.fsdp


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def barrier() -> None:
    if is_initialized():
        dist.barrier()


# --------------------------------------------------------------------------------------------
# Sharding
# --------------------------------------------------------------------------------------------


def resolve_param_dtype(dist_cfg: DistributedConfig, precision: str, device_type: str):
    """Compute dtype of the gathered parameters (None: keep fp32).

    ``distributed.param_dtype=auto`` follows ``train.precision``: bf16 on a GPU that supports it,
    fp32 on CPU. fp16 parameters would need a sharded gradient scaler, which fastdino does not
    ship: that combination is refused rather than silently trained without loss scaling.
    """
    from fastdino_cli.train.precision import resolve_precision_name

    # the loop's autocast resolves "auto" to fp16 on GPUs without bf16, fp32 on the CPU
    precision = resolve_precision_name(precision, device_type)
    name = dist_cfg.param_dtype
    if name == "auto":
        name = precision
    if name == "fp16" or precision == "fp16":
        raise ConfigError(
            "fp16 with FSDP2 sharding needs a sharded gradient scaler that fastdino does not "
            "provide; set train.precision=bf16 (or fp32), or distributed.fsdp=false"
        )
    return None if name == "fp32" else _DTYPES[name]


def apply_fsdp(
    meta_arch: nn.Module,
    dist_cfg: DistributedConfig,
    precision: str,
    *,
    device: torch.device | None = None,
) -> nn.Module:
    """Shard ``SSLMetaArch`` in place with FSDP2 (see the module docstring); returns it.

    Call after the weights are final on every rank (e.g. after loading a checkpoint into the
    unsharded model) and BEFORE building the optimizer: ``fully_shard`` replaces parameters.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from torch.distributed.fsdp import register_fsdp_forward_method as register

    if not is_initialized():
        raise RuntimeError("apply_fsdp needs an initialised torch.distributed process group")
    device = device or next(meta_arch.parameters()).device
    meta_arch.to(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    param_dtype = resolve_param_dtype(dist_cfg, precision, device.type)
    body = MixedPrecisionPolicy(
        param_dtype=param_dtype, reduce_dtype=_DTYPES[dist_cfg.reduce_dtype]
    )
    heads = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for name in ("student", "teacher", "frozen_teacher"):  # frozen_teacher: distillation's
        part = getattr(meta_arch, name, None)
        if part is None:
            continue
        # the teacher only runs forward: keeping any of its units unsharded would serve stale
        # weights after the in-place EMA (pitfall 1)
        reshard = True if name != "student" else dist_cfg.reshard_after_forward
        for block in part["backbone"].blocks:
            fully_shard(block, mesh=mesh, mp_policy=body, reshard_after_forward=reshard)
            register(block, "forward_packed")
        for key in ("dino_head", "ibot_head"):
            if key in part:
                fully_shard(part[key], mesh=mesh, mp_policy=heads, reshard_after_forward=reshard)
    fully_shard(meta_arch, mesh=mesh, mp_policy=body)
    return meta_arch


def reshard(model: nn.Module) -> None:
    """Drop every unsharded parameter copy (the root's stays after a forward without backward)."""
    if is_sharded(model):
        for module in model.modules():
            if is_sharded(module):
                module.reshard()


# --------------------------------------------------------------------------------------------
# Full state dicts (the one checkpoint format)
# --------------------------------------------------------------------------------------------


def _full_options(**kw: Any):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_state_dicts(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(student, teacher) state dicts of full CPU tensors.

    Sharded: a collective (every rank must call it); rank 0 gets the tensors, the others get
    empty dicts. Unsharded: the plain state dicts (live tensors, as ``state_dict`` returns).
    """
    if not is_sharded(model):
        return dict(model.student.state_dict()), dict(model.teacher.state_dict())
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    reshard(model)
    full = get_model_state_dict(model, options=_full_options(cpu_offload=True))
    student = {k[len("student.") :]: v for k, v in full.items() if k.startswith("student.")}
    teacher = {k[len("teacher.") :]: v for k, v in full.items() if k.startswith("teacher.")}
    return student, teacher


def load_full_state(
    model: nn.Module, student: dict[str, Tensor], teacher: dict[str, Tensor]
) -> None:
    """Load full (single-file) student/teacher state dicts into a sharded or plain model.

    Keys are checked strictly first (``CheckpointError`` listing them); each rank then keeps
    only its own shard of every tensor, so the file may come from any number of processes.
    """
    if not is_sharded(model):
        load_state_dict_strict(model.student, student, "student")
        load_state_dict_strict(model.teacher, teacher, "teacher")
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    _check_keys(model.student, student, "student")
    _check_keys(model.teacher, teacher, "teacher")
    full = {f"student.{k}": v for k, v in student.items()}
    full.update({f"teacher.{k}": v for k, v in teacher.items()})
    # strict=False only because the loss centres are not part of the weights (loaded apart)
    set_model_state_dict(model, full, options=_full_options(strict=False))


class _KeyCheck:
    """Stands in for a module in ``load_state_dict_strict``: same keys and (global) shapes, but
    loading is a no-op, so the project's one strict-load message covers sharded models too."""

    def __init__(self, module: nn.Module) -> None:
        self._state = module.state_dict()  # DTensors report their global shapes

    def state_dict(self) -> dict[str, Tensor]:
        return self._state

    def load_state_dict(self, state_dict: dict[str, Tensor], strict: bool = True) -> None:
        return None


def _check_keys(module: nn.Module, state: dict[str, Tensor], what: str) -> None:
    load_state_dict_strict(_KeyCheck(module), state, what)  # type: ignore[arg-type]


def config_for_this_world(ckpt: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """The checkpoint's config, with its batch and epoch restated in ``cfg``'s keys for this
    world size (``config.restate_stored_run``).

    Resuming on another number of processes continues exactly when the GLOBAL batch is
    unchanged (the sample order is a function of the global batch): a per-process batch that
    keeps ``batch_size_per_gpu x processes``, or a stored per-GPU batch (runs from before
    ``train.global_batch``) whose product is the new global batch, is therefore not a config
    change. Anything else still is (``--force-config``).
    """
    old = dict(ckpt.get("config") or {})
    saved_world = int((ckpt.get("train_state") or {}).get("world_size", 1))
    _, world = rank_and_world()
    return restate_stored_run(old, saved_world, cfg, world)


# --------------------------------------------------------------------------------------------
# Optimizer state in the unsharded torch.optim format
# --------------------------------------------------------------------------------------------


def _param_names(model: nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in model.named_parameters()}


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` as the unsharded optimizer would return it (rank 0).

    Sharded: a collective; rank 0 gets full CPU tensors keyed by integer ids in param-group
    order, the other ranks get an empty dict.
    """
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    reshard(model)
    by_fqn = get_optimizer_state_dict(model, optimizer, options=_full_options(cpu_offload=True))
    if not by_fqn:
        return {}
    names = _param_names(model)
    fqn_order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    index = {fqn: i for i, fqn in enumerate(fqn_order)}
    groups = []
    for g in by_fqn["param_groups"]:
        groups.append({**g, "params": [index[f] for f in g["params"]]})
    state = {index[f]: s for f, s in by_fqn["state"].items()}
    return {"state": state, "param_groups": groups}


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Inverse of ``full_optimizer_state``: every rank passes the full (file) state."""
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    names = _param_names(model)
    fqn_order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    if len(fqn_order) != sum(len(g["params"]) for g in state["param_groups"]):
        from fastdino_cli.errors import CheckpointError

        raise CheckpointError(
            "the checkpoint's optimizer state does not match the model's parameters"
        )
    groups = [{**g, "params": [fqn_order[i] for i in g["params"]]} for g in state["param_groups"]]
    by_fqn = {"state": {fqn_order[i]: s for i, s in state["state"].items()}, "param_groups": groups}
    set_optimizer_state_dict(model, optimizer, by_fqn, options=_full_options())


# --------------------------------------------------------------------------------------------
# Small collectives for the loop
# --------------------------------------------------------------------------------------------


def min_over_ranks(flags: Tensor) -> Tensor:
    """Element-wise minimum of ``flags`` over ranks, on ``flags``' own device.

    The training step's flags (loss finite, no stop requested) go through here so that every
    rank skips or stops at the same step. On NCCL the all-reduce is queued on the GPU like any
    kernel: nothing waits for it on the host.
    """
    if not is_initialized():
        return flags
    out = flags.to(_comm_device())
    dist.all_reduce(out, op=dist.ReduceOp.MIN)
    return out.to(flags.device)


def _comm_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo works on CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def mean_over_ranks(metrics: dict[str, Tensor]) -> dict[str, Tensor]:
    """Average scalar metrics over ranks in one all-reduce (the global-batch value for means)."""
    if not is_initialized() or not metrics:
        return metrics
    keys = list(metrics)
    values = torch.stack([metrics[k].detach().float().reshape(()) for k in keys])
    values = values.to(_comm_device())
    dist.all_reduce(values)
    values /= dist.get_world_size()
    return {k: values[i] for i, k in enumerate(keys)}


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (plain data), in rank order; ``[obj]`` without a process group."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shutdown() -> None:
    """Tear the process group down once every rank is done.

    Left to interpreter exit, gloo's threads can abort the process ("terminate called without an
    active exception", exit code -6) after a run that finished cleanly.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
