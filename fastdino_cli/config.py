"""Typed configuration, the preset registry and ``key=value`` overrides.

Precedence, lowest to highest::

    schema defaults  <-  preset chain (``extends:``)  <-  --config FILE  <-  key=value overrides

Presets are YAML files in ``fastdino_cli/presets/`` (shipped inside the installed package). A preset
holds only its differences from what it extends, plus a ``description:`` line for ``presets list``.
Every section is a pydantic model with ``extra="forbid"``: an unknown key or a bad value is a
``ConfigError`` naming the dotted key and, for typos, the closest valid key.

Only ``train/loop.py`` sees the whole ``Config``; everything else receives its own section
(``build_vit(cfg.model)``, ``stage_at(cfg.curriculum, ...)``).
"""

from __future__ import annotations

import difflib
import importlib.resources
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fastdino_cli.errors import ConfigError

MAX_ITERATIONS = 10**12
"""Longest run accepted (far beyond any real one): larger products of ``optim.epochs`` and
``train.epoch_length`` overflow the integer step counts downstream."""
ARCH_NAMES = ("vit_tiny", "vit_small", "vit_base", "vit_large", "vit_giant2")


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, defaults are validated, and no
    float anywhere (fields, tuples, stages) may be inf or nan (``allow_inf_nan``): ``.inf`` is
    valid YAML and passes every ``gt=0`` bound, then trains to NaN weights or overflows."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


class ModelConfig(Section):
    """The ViT backbone (see ``model/vit.py`` for the size table)."""

    arch: Literal["vit_tiny", "vit_small", "vit_base", "vit_large", "vit_giant2"] = "vit_small"
    """Size preset: dims, depth, heads and FFN type of the DINOv2 architectures."""
    patch_size: int = Field(16, ge=1)
    """Side of the square patches (16 for FastDINOv2, 14 for the released DINOv2 weights)."""
    img_size: int = Field(224, ge=1)
    """Image size the learnable position embedding grid is built for (grid = img_size // patch).
    Other input sizes interpolate it bicubically on the fly."""
    embed_dim: int | None = Field(None, ge=1)
    """Override of the arch's width (None: the arch's value)."""
    depth: int | None = Field(None, ge=1)
    """Override of the arch's number of blocks."""
    num_heads: int | None = Field(None, ge=1)
    """Override of the arch's number of attention heads."""
    ffn: Literal["mlp", "swiglu"] | None = None
    """Override of the arch's FFN type."""
    mlp_ratio: float = Field(4.0, gt=0)
    """Hidden width of the FFN relative to the embedding width."""
    num_register_tokens: int = Field(0, ge=0)
    """Register tokens inserted after CLS (no position embedding)."""
    layerscale_init: float | None = 1e-5
    """Initial LayerScale value; None disables LayerScale."""
    drop_path_rate: float = Field(0.0, ge=0.0, lt=1.0)
    """Uniform stochastic-depth rate of the student (the teacher never drops)."""
    efficient_drop_path: bool = True
    """Compute a dropped residual branch only on the kept samples (DINOv2's trick)."""
    interpolate_antialias: bool = False
    """Antialias the bicubic position-embedding interpolation (True for the reg4 releases)."""
    interpolate_offset: float = Field(0.1, ge=0.0)
    """DINOv2's legacy scale-factor offset (0.1 for the non-reg releases, 0.0 for reg4)."""
    attention: Literal["auto", "sdpa", "xformers", "varlen"] = "auto"
    """Attention backend for multi-crop batches: grouped SDPA, or one packed call on CUDA."""
    compile: bool = False
    """``torch.compile`` each transformer block."""
    activation_checkpointing: bool = False
    """Recompute block activations in backward to save memory."""


class DataConfig(Section):
    """Where the pretraining images come from and how they are loaded."""

    train: str | None = None
    """Folder of training images (any tree; labels are not needed), or a ``.txt`` list of image
    paths (one per line, e.g. from ``fastdino curate``). Required by ``pretrain``."""
    num_workers: int = Field(2, ge=0)
    """Data-loader worker processes per GPU."""
    fast_decode: bool = True
    """Decode JPEGs at reduced scale when the crops are small (Pillow ``draft``)."""
    pin_memory: bool = True
    """Pin host memory for faster copies to the GPU (ignored on CPU)."""
    prefetch_factor: int = Field(2, ge=1)
    """Batches prefetched by each worker."""


class CropsConfig(Section):
    """Multi-crop views and their photometric augmentations (DINOv2 values by default).

    Probabilities are applied literally: the defaults are what the released DINOv2 models were
    actually trained with (blur 0.0 / 0.9 / 0.5), not the reference code's inverted arguments.
    """

    global_crops_scale: tuple[float, float] = (0.32, 1.0)
    local_crops_scale: tuple[float, float] = (0.05, 0.32)
    local_crops_number: int = Field(8, ge=0)
    global_crops_size: int = Field(224, ge=1)
    """Used when the curriculum stage does not set its own size."""
    local_crops_size: int = Field(96, ge=1)
    """Used when the curriculum stage does not set its own size."""
    strategy: Literal["original", "shared", "crop-resize", "crop"] = "original"
    """Augmentation strategy ("cropping is all you need"): full DINOv2 photometric pipeline,
    one photometric draw shared by all views, RandomResizedCrop only, or RandomCrop only."""
    flip_prob: float = Field(0.5, ge=0, le=1)
    color_jitter_prob: float = Field(0.8, ge=0, le=1)
    brightness: float = Field(0.4, ge=0)
    contrast: float = Field(0.4, ge=0)
    saturation: float = Field(0.2, ge=0)
    hue: float = Field(0.1, ge=0, le=0.5)
    grayscale_prob: float = Field(0.2, ge=0, le=1)
    blur_prob_global1: float = Field(0.0, ge=0, le=1)
    blur_prob_global2: float = Field(0.9, ge=0, le=1)
    blur_prob_local: float = Field(0.5, ge=0, le=1)
    blur_kernel_size: int = Field(9, ge=1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_prob_global2: float = Field(0.2, ge=0, le=1)
    solarize_threshold: int = Field(128, ge=0, le=256)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


class HeadConfig(Section):
    """A DINO-style projection head: MLP, L2 norm, weight-normalised prototypes."""

    n_prototypes: int = Field(65536, ge=1)
    bottleneck_dim: int = Field(256, ge=1)
    hidden_dim: int = Field(2048, ge=1)
    nlayers: int = Field(3, ge=1)


class DinoConfig(Section):
    """DINO cls-token loss, its head, and KoLeo."""

    loss_weight: float = Field(1.0, ge=0)
    head: HeadConfig = HeadConfig()
    koleo_loss_weight: float = Field(0.1, ge=0)
    student_temp: float = Field(0.1, gt=0)


class IbotConfig(Section):
    """iBOT masked-patch loss, block masking and the (shared or separate) head."""

    loss_weight: float = Field(1.0, ge=0)
    separate_head: bool = False
    head: HeadConfig = HeadConfig()
    mask_sample_probability: float = Field(0.5, ge=0, le=1)
    """Fraction of global crops that get a mask."""
    mask_ratio_min_max: tuple[float, float] = (0.1, 0.5)
    """Stratified range of the fraction of patches masked in a masked crop."""


class CenteringConfig(Section):
    """How the teacher targets are centred."""

    method: Literal["softmax", "sinkhorn_knopp"] = "softmax"
    center_momentum: float = Field(0.9, ge=0, le=1)
    sinkhorn_iterations: int = Field(3, ge=1)


class OptimConfig(Section):
    """AdamW, the learning-rate and weight-decay schedules and parameter groups."""

    epochs: float = Field(100, gt=0)
    """Length of the run in "epochs" of ``train.epoch_length`` iterations."""
    warmup_epochs: float = Field(10, ge=0)
    base_lr: float = Field(0.004, gt=0)
    """Learning rate at a global batch of ``lr_scaling_batch`` images (sqrt scaling)."""
    lr_scaling_batch: int = Field(1024, ge=1)
    min_lr: float = Field(1e-6, ge=0)
    weight_decay: float = Field(0.04, ge=0)
    weight_decay_end: float = Field(0.4, ge=0)
    layerwise_decay: float = Field(0.9, gt=0, le=1)
    patch_embed_lr_mult: float = Field(0.2, ge=0)
    clip_grad: float | None = Field(3.0, gt=0)
    """Gradient-norm clip applied separately to backbone, DINO head and iBOT head."""
    freeze_last_layer_epochs: float = Field(1, ge=0)
    adamw_beta1: float = Field(0.9, ge=0, lt=1)
    adamw_beta2: float = Field(0.999, ge=0, lt=1)
    fused: bool | None = None
    """Fused AdamW (None: on CUDA only)."""


class TeacherConfig(Section):
    """EMA momentum and teacher temperature schedules."""

    momentum: float = Field(0.992, ge=0, le=1)
    final_momentum: float = Field(1.0, ge=0, le=1)
    warmup_temp: float = Field(0.04, gt=0)
    temp: float = Field(0.07, gt=0)
    warmup_temp_epochs: float = Field(30, ge=0)


class NoisePatchingConfig(Section):
    """Gaussian noise patching (FastDINOv2): one noisy square on the full image before cropping."""

    enabled: bool = False
    prob: float = Field(1.0, ge=0, le=1)
    max_sigma: float = Field(0.2, ge=0)
    """Noise std is drawn from U(0, max_sigma) in [0, 1] pixel space (0.2 is what ran)."""


class StageConfig(Section):
    """One curriculum stage, active from the previous stage's ``end`` up to its own."""

    name: str = ""
    end: float = Field(1.0, gt=0, le=1)
    """Fraction of the total iterations at which this stage ends."""
    global_crops_size: int | None = Field(None, ge=1)
    """None: ``crops.global_crops_size``."""
    local_crops_size: int | None = Field(None, ge=1)
    """None: ``crops.local_crops_size``."""
    noise_patching: NoisePatchingConfig = NoisePatchingConfig()
    restart: bool = False
    """At the stage start, reset AdamW state and restart every schedule (FastDINOv2 stage 2)."""
    schedule_epochs: float | None = Field(None, gt=0)
    """Length the schedules of the segment starting here are built for (None: until the next
    restart or the end). FastDINOv2's stage 1 uses the full run's length and is cut at 75%."""
    warmup_epochs: float | None = Field(None, ge=0)
    """Warmup of a restarted segment (None: ``optim.warmup_epochs``)."""


class CurriculumConfig(Section):
    """Stages ordered by training progress; the last one ends at 1.0."""

    stages: list[StageConfig] = Field(default_factory=lambda: [StageConfig()])

    @model_validator(mode="after")
    def _ordered(self) -> CurriculumConfig:
        if not self.stages:
            raise ValueError("needs at least one stage")
        ends = [s.end for s in self.stages]
        if any(b <= a for a, b in zip(ends, ends[1:], strict=False)):
            raise ValueError(f"stage ends must increase strictly, got {ends}")
        if ends[-1] != 1.0:
            raise ValueError(f"the last stage must end at 1.0, got {ends[-1]}")
        return self


class TrainConfig(Section):
    """The run: batch, length, outputs, precision and safety nets."""

    batch_size_per_gpu: int = Field(64, ge=1)
    epoch_length: int = Field(1250, ge=1)
    """Iterations per "epoch" (DINOv2's OFFICIAL_EPOCH_LENGTH): a pure multiplier."""
    output_dir: str = "runs/fastdino"
    checkpoint_period: int = Field(1000, ge=1)
    """Iterations between resumable checkpoints (``checkpoint.pt``)."""
    keep_checkpoints: int = Field(3, ge=0)
    """Periodic ``checkpoints/step_*.pt`` files kept (0: none)."""
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto: bf16 on CUDA when supported, else fp32."""
    centering: CenteringConfig = CenteringConfig()
    log_period: int = Field(10, ge=1)
    max_bad_steps: int = Field(5, ge=1)
    """Consecutive non-finite losses tolerated before the run stops."""
    max_steps: int | None = Field(None, ge=1)
    """Stop early after this many iterations (schedules still span the full run)."""


class DistributedConfig(Section):
    """Sharding across processes (FSDP2); ignored in a single process."""

    fsdp: bool = True
    reshard_after_forward: bool = True
    param_dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    reduce_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"


class Config(Section):
    """The whole resolved configuration of a run."""

    preset: str | None = None
    """Name of the preset this config was resolved from (informational)."""
    description: str = ""
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    crops: CropsConfig = CropsConfig()
    dino: DinoConfig = DinoConfig()
    ibot: IbotConfig = IbotConfig()
    optim: OptimConfig = OptimConfig()
    teacher: TeacherConfig = TeacherConfig()
    curriculum: CurriculumConfig = CurriculumConfig()
    train: TrainConfig = TrainConfig()
    distributed: DistributedConfig = DistributedConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        """Checks across sections. Crops LARGER than ``model.img_size`` are valid (the position
        embedding is interpolated: FastDINOv2's stage 2 does exactly that), and so are sizes that
        are not multiples of the patch (the border is dropped, as DINOv2's 96 px local crops with
        patch 14 do); invalid are sizes below one patch and ranges that are swapped or out of
        bounds."""
        total = self.optim.epochs * self.train.epoch_length
        if not total <= MAX_ITERATIONS:  # finite values can still overflow the product
            raise ValueError(
                f"optim.epochs={self.optim.epochs:g} x train.epoch_length="
                f"{self.train.epoch_length} = {total:.3g} iterations; a run has at most "
                f"{MAX_ITERATIONS:.0e}: lower optim.epochs"
            )
        p = self.model.patch_size
        sizes = {
            "model.img_size": self.model.img_size,
            "crops.global_crops_size": self.crops.global_crops_size,
            "crops.local_crops_size": self.crops.local_crops_size,
        }
        for i, st in enumerate(self.curriculum.stages):
            for kind in ("global", "local"):
                if getattr(st, f"{kind}_crops_size") is not None:
                    key = f"curriculum.stages.{i}.{kind}_crops_size"
                    sizes[key] = getattr(st, f"{kind}_crops_size")
        for key, size in sizes.items():
            if size < p:
                raise ValueError(
                    f"{key}={size} is smaller than model.patch_size={p}: no patch fits"
                )
        ranges = {  # key: (value, lowest min allowed, min may equal it, highest max)
            "crops.global_crops_scale": (self.crops.global_crops_scale, 0.0, False, 1.0),
            "crops.local_crops_scale": (self.crops.local_crops_scale, 0.0, False, 1.0),
            "crops.blur_sigma": (self.crops.blur_sigma, 0.0, False, float("inf")),
            "ibot.mask_ratio_min_max": (self.ibot.mask_ratio_min_max, 0.0, True, 1.0),
        }
        for key, ((a, b), lo, closed, hi) in ranges.items():
            if not ((lo <= a) if closed else (lo < a)) or not a <= b <= hi:
                rule = f"{lo} {'<=' if closed else '<'} min <= max" + (
                    f" <= {hi}" if hi != float("inf") else ""
                )
                raise ValueError(f"{key}=[{a}, {b}] must satisfy {rule}")
        return self

    @property
    def total_iterations(self) -> int:
        """Iterations of the whole run (``optim.epochs`` x ``train.epoch_length``)."""
        return max(1, round(self.optim.epochs * self.train.epoch_length))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, not tuples) for YAML and checkpoints."""
        return _plain(self.model_dump(mode="python"))


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------


def _preset_dir() -> Path:
    return Path(str(importlib.resources.files("fastdino_cli") / "presets"))


def list_presets() -> dict[str, str]:
    """Name -> one-line description of every shipped preset, sorted by name."""
    out = {}
    for path in sorted(_preset_dir().glob("*.yaml")):
        raw = _read_yaml(path)
        out[path.stem] = str(raw.get("description", "")).strip()
    return out


def _load_preset_chain(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The preset merged over everything it ``extends:``, as plain data."""
    path = _preset_dir() / f"{name}.yaml"
    if not path.is_file():
        names = list(list_presets())
        raise ConfigError(
            f"unknown preset {name!r}{_suggest(name, names)}; see `fastdino presets list`"
        )
    if name in seen:
        raise ConfigError(f"preset {name!r} extends itself through {' -> '.join(seen)}")
    raw = _read_yaml(path)
    parent = raw.pop("extends", None)
    base = _load_preset_chain(str(parent), (*seen, name)) if parent else {}
    return deep_merge(base, raw)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------


def resolve_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
) -> Config:
    """Build a validated ``Config``: defaults <- preset chain <- config file <- overrides."""
    data: dict[str, Any] = {}
    if preset:
        data = _load_preset_chain(preset)
        data["preset"] = preset
    if config_file:
        file_data = _read_yaml(Path(config_file))
        file_data.pop("extends", None)
        data = deep_merge(data, file_data)
    for item in overrides or []:
        key, value = parse_override(item)
        data = apply_override(data, key, value)
    return validate_config(data)


def validate_config(data: dict[str, Any]) -> Config:
    """Validate plain data against the schema; errors name the dotted key."""
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe_validation_error(e, data)) from None


def parse_override(item: str) -> tuple[str, Any]:
    """``"optim.base_lr=1e-3"`` -> ``("optim.base_lr", 0.001)``; values are parsed as YAML."""
    if "=" not in item:
        raise ConfigError(
            f"override {item!r} is not of the form key=value (e.g. optim.base_lr=1e-3)"
        )
    key, _, text = item.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    # YAML 1.1 reads "1e-3" as a string; accept it as the float a user means.
    if isinstance(value, str):
        try:
            value = float(value) if value.strip().lower() not in ("nan", "inf", "-inf") else value
        except ValueError:
            pass
    return key, value


def apply_override(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """Set ``dotted`` (``a.b.c``; integers index lists) in a copy of ``data``."""
    out = deep_merge({}, data)
    parts = dotted.split(".")
    node: Any = out
    schema: Any = Config
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                prefix = ".".join(parts[:i])
                raise ConfigError(
                    f"{dotted}: {prefix} has {len(node)} entries, index {part!r} is out of range"
                )
            idx = int(part)
            if last:
                node[idx] = value
            else:
                if node[idx] is None:
                    node[idx] = {}
                node = node[idx]
            schema = _item_schema(schema)
            continue
        schema = _check_key(schema, part, ".".join(parts[: i + 1]))
        if last:
            node[part] = value
        else:
            child = node.get(part)
            if child is None:
                child = [StageConfig().model_dump()] if part == "stages" else {}
                node[part] = child
            node = child
    return out


def _item_schema(schema: Any) -> Any:
    return StageConfig if schema is list else schema


def _check_key(schema: Any, key: str, dotted: str) -> Any:
    """Return the schema of ``key`` inside ``schema``, or raise with a did-you-mean."""
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        fields = schema.model_fields
        if key not in fields:
            prefix = dotted.rsplit(".", 1)[0] + "." if "." in dotted else ""
            raise ConfigError(f"unknown config key {dotted!r}{_suggest(key, list(fields), prefix)}")
        ann = fields[key].annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            return ann
        if key == "stages":
            return list
        return None
    return None


def _suggest(word: str, options: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""


def _describe_validation_error(e: ValidationError, data: dict[str, Any]) -> str:
    err = e.errors()[0]
    loc = [str(p) for p in err["loc"]]
    dotted = ".".join(loc)
    if err["type"] == "extra_forbidden":
        schema: Any = Config
        for part in loc[:-1]:
            schema = _check_key(schema, part, dotted) if not part.isdigit() else StageConfig
        options = list(schema.model_fields) if schema else []
        prefix = ".".join(loc[:-1])
        prefix = prefix + "." if prefix else ""
        return f"unknown config key {dotted!r}{_suggest(loc[-1], options, prefix)}"
    msg = err["msg"]
    if err["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
    if not dotted:
        return f"invalid config: {msg}"
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"invalid value for {dotted}: {msg}{shown}"


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------

PATH_KEYS = ("data.train", "train.output_dir")
"""Every config key that holds a filesystem path."""
DEMO_DATA_ALIAS = "demo"
"""``data.train: demo``: a keyword (the embedded demo data), not a path."""


def absolute_path(value: str, base: str | Path) -> str:
    """``value`` (``~`` expanded) made absolute against ``base``, normalised, links kept."""
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def with_absolute_paths(cfg: Config, base: str | Path | None = None) -> Config:
    """``cfg`` with every path key (``PATH_KEYS``) absolute, against ``base`` (default: the
    current directory).

    A run stores its resolved config in ``config.yaml``; a relative path there would mean
    something else when the run is resumed from another directory (other data, or a refusal
    because ``demo_out/data/train`` is not spelled ``/home/me/demo_out/data/train``). Runs
    therefore resolve their paths when they start and store them absolute.
    """
    base = Path.cwd() if base is None else base
    data = cfg.to_dict()
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = data[section][name]
        if isinstance(value, str) and value and value != DEMO_DATA_ALIAS:
            data[section][name] = absolute_path(value, base)
    return validate_config(data)


# --------------------------------------------------------------------------------------------
# Plain-data helpers
# --------------------------------------------------------------------------------------------


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; lists and scalars in ``update`` replace those in ``base``."""
    out: dict[str, Any] = {}
    for k, v in base.items():
        out[k] = deep_merge({}, v) if isinstance(v, dict) else _copy(v)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = deep_merge({}, v) if isinstance(v, dict) else _copy(v)
    return out


def _copy(v: Any) -> Any:
    if isinstance(v, list):
        return [deep_merge({}, x) if isinstance(x, dict) else _copy(x) for x in v]
    return v


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def config_to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (what ``presets show`` prints and runs save)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=False)


def load_config_yaml(text: str) -> Config:
    """Inverse of ``config_to_yaml``."""
    data = yaml.safe_load(text) or {}
    return validate_config(data)
