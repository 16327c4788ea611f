"""The one config schema: YAML file + dotted ``--set`` overrides, validated.

Every section forbids unknown keys so a typo ("trian.budget_s") is an error
that names the field instead of a silently ignored setting.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(_Section):
    name: str = "wcgan"
    # A path, a file:// URI, or an object-store URI (s3://bucket/prefix, gs://bucket/prefix, any URI
    # pyarrow.fs resolves) with credentials from the cloud SDK's environment: see core/storage.py.
    storage: str = "runs"
    # None: <name>-<timestamp>. Fixed ids let a re-submitted job resume a run.
    id: Optional[str] = None

    @field_validator("storage")
    @classmethod
    def _storage_location(cls, v):
        if "://" in v and not v.startswith("file://") and not re.fullmatch(r"[a-z][a-z0-9+.-]*://[^/\s]+(/\S*)?", v):
            raise ValueError("an object-store URI is <scheme>://<bucket>[/<prefix>], e.g. s3://my-bucket/runs")
        return v

    @field_validator("name", "id")
    @classmethod
    def _safe_name(cls, v):
        # One path component: no '/', no leading '.', so never '..' or a hidden directory.
        if v is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError("use letters, digits, '.', '_' or '-', starting with a letter or digit "
                             "(it names a directory and Ray actors)")
        if v is not None and len(v) > 100:
            raise ValueError("at most 100 characters (it names a directory)")
        return v


class DatasetConfig(_Section):
    name: Literal["digits", "cifar10", "cifar100", "imagenet1k", "folder"] = "digits"
    root: Optional[str] = None
    download: bool = False
    # None: the data set's own resolution (8 for digits, 32 for CIFAR, 64 for ImageNet; a
    # folder's first image, snapped). auto: like None, said explicitly. A number: exactly that
    # size, which the networks must be able to build (see workers/models.py).
    image_size: Union[Literal["auto"], None, int] = None
    labels: Union[Literal["all"], list[int]] = "all"
    # Share of each label's images held out for evaluation (digits, folder, imagenet1k;
    # CIFAR has its own test split).
    test_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)

    @field_validator("image_size")
    @classmethod
    def _size_range(cls, v):
        if isinstance(v, int) and not 4 <= v <= 1024:
            raise ValueError("must be 'auto' or a number of pixels in [4, 1024]")
        return v

    @field_validator("labels")
    @classmethod
    def _labels_unique(cls, v):
        if isinstance(v, list):
            if not v:
                raise ValueError("must be 'all' or a non-empty list of label indices")
            if len(set(v)) != len(v):
                raise ValueError("label indices must be unique")
            if min(v) < 0:
                raise ValueError("label indices must be >= 0")
        return v


class ModelConfig(_Section):
    z_dim: int = Field(default=128, ge=1, le=4096)
    # Channels of the widest-resolution layer; deeper layers double it up to 8x. auto: before the
    # budget clocks start, the label actors time a ladder of widths on their devices and the run takes
    # the widest whose projected generator steps reach the minimum for the resolution (recorded in
    # the run's config.yaml, so a resume reuses it).
    width: Union[Literal["auto"], int] = 64
    # Keep an exponential moving average of the generator's weights (decay min(0.999, (1+t)/(10+t))
    # at step t) and sample and score it instead of the last weights.
    ema: bool = False
    # A generator larger than this is refused before anything starts (a 375 px folder image once
    # asked for 1.15 billion parameters); raise it deliberately for large models.
    max_parameters: int = Field(default=200_000_000, ge=1)

    @field_validator("width", mode="before")
    @classmethod
    def _auto_or_channels(cls, v):
        # One message for both forms (a Union would report each of its branches).
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 4 <= v <= 1024):
            return v
        raise ValueError("must be 'auto' or a whole number of channels in [4, 1024]")


class TrainConfig(_Section):
    budget_s: float = Field(default=120.0, gt=0)
    max_steps: Optional[int] = Field(default=None, ge=1)
    batch_size: int = Field(default=64, ge=2)  # the generator's batch norm needs 2+
    n_critic: int = Field(default=5, ge=1)
    gp_weight: float = Field(default=10.0, ge=0)
    lr: float = Field(default=1e-4, gt=0, lt=1)
    betas: tuple[float, float] = (0.0, 0.9)
    checkpoint_every_s: float = Field(default=30.0, gt=0)
    # Full checkpoints (critic, optimisers, RNG: what a resume needs) kept per label, newest first.
    # The small generator-only snapshots scored over time are all kept. None keeps every checkpoint.
    keep_checkpoints: Optional[int] = Field(default=2, ge=1)
    log_every_s: float = Field(default=5.0, gt=0)
    # The driver gives up on a label budget_s + deadline_grace_s after the start line opened
    # (checkpoints and restarts are paid from the grace), and restarts a label that reported no
    # new step for stall_timeout_s (default: 12 log intervals, at least 60 s).
    deadline_grace_s: float = Field(default=600.0, gt=0)
    stall_timeout_s: Optional[float] = Field(default=None, gt=0)
    seed: int = 0
    # bf16 autocast on CUDA; ignored on CPU.
    amp: bool = True

    @field_validator("betas")
    @classmethod
    def _betas_range(cls, v):
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError("each beta must be in [0, 1)")
        return v


Auto = Literal["auto"]


class ResourcesConfig(_Section):
    # A label trains on at most one GPU (its networks fit one); a share below 1 packs labels on a GPU.
    gpus_per_label: Union[Auto, float] = "auto"
    cpus_per_label: Union[Auto, float] = "auto"
    # Label processes sharing one GPU, each with its own CUDA context and cuDNN workspace. Past
    # this, one actor trains several labels in turn (one CUDA context, fair steps each).
    max_actors_per_gpu: int = Field(default=8, ge=1)
    # Labels trained by one actor. auto: 1, unless GPUs are shared past max_actors_per_gpu.
    labels_per_actor: Union[Auto, int] = "auto"
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    # How long to wait for the placement group before failing (autoscaling clusters need longer).
    placement_timeout_s: float = Field(default=120.0, gt=0)
    # True: the cluster autoscales. Plan from explicit gpus_per_label/cpus_per_label rather than
    # from the nodes alive now, and let the placement group ask the autoscaler for nodes.
    autoscale: bool = False

    @field_validator("gpus_per_label")
    @classmethod
    def _one_gpu_at_most(cls, v):
        if v != "auto" and not (0 <= v <= 1):
            raise ValueError("must be 'auto' or a number in [0, 1]: a label's generator and critic train on one "
                             "GPU (a share below 1 packs several labels on a GPU). To use more GPUs, train more "
                             "labels at once")
        return v

    @field_validator("cpus_per_label")
    @classmethod
    def _non_negative(cls, v):
        if v != "auto" and not (0 <= v <= 1024):
            raise ValueError("must be 'auto' or a number in [0, 1024]")
        return v

    @field_validator("labels_per_actor")
    @classmethod
    def _positive(cls, v):
        if v != "auto" and v < 1:
            raise ValueError("must be 'auto' or a whole number >= 1")
        return v


class MetricsConfig(_Section):
    # quick: metrics.samples_per_label per label (progress during a run, CPU machines).
    # standard: the published protocol: 50,000 generated images, labels drawn in proportion to
    # the training class frequencies, against the full training split; IS over 10 splits of the
    # same images, KID, intra-class FID and precision/recall (k=3). Recorded on every result row.
    protocol: Literal["quick", "standard"] = "quick"
    # auto: inception for natural images at >= 32 px, else a classifier trained on the data set.
    feature_extractor: Literal["auto", "classifier", "inception"] = "auto"
    feature_extractor_weights_path: Optional[str] = None
    samples_per_label: int = Field(default=200, ge=2)
    # Score intermediate checkpoints every this much training time (None: final only).
    every_s: Optional[float] = Field(default=None, gt=0)
    is_splits: int = Field(default=10, ge=1)
    batch_size: int = Field(default=256, ge=1)
    enabled: bool = True
    # Seeds the samples' noise and the IS / KID random splits (same noise at every evaluation time).
    seed: int = 0
    kid_subsets: int = Field(default=100, ge=1)
    # Clipped to the number of samples available.
    kid_subset_size: int = Field(default=1000, ge=2)
    # feature_extractor=inception: try to download missing weights into the hub cache (needs a network).
    download_weights: bool = True
    # Cap on real images per label for the reference statistics and the classifier's training set
    # (None: all; lower it for quick CPU evaluations of large data sets).
    real_max_per_label: Optional[int] = Field(default=None, ge=2)


class Config(_Section):
    run: RunConfig = RunConfig()
    dataset: DatasetConfig = DatasetConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    resources: ResourcesConfig = ResourcesConfig()
    metrics: MetricsConfig = MetricsConfig()
    max_restarts: int = Field(default=1, ge=0)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


def _parse_value(text: str) -> Any:
    """`--set a.b=1e-4` values are YAML scalars/lists, so types match the file's."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.budget_s=60")
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(f"--set {item!r}: empty part in the key; use a dotted key like train.budget_s=60")
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if child is None:  # an empty section in the file
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: '{part}' is not a section")
            node = child
        node[parts[-1]] = _parse_value(value)
    return raw


def _section_fields(loc: tuple) -> list[str]:
    """Keys allowed where an unknown key was found (for a 'did you mean' hint)."""
    model: Any = Config
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            break
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def _format_error(e: dict) -> str:
    loc = tuple(p for p in e["loc"] if not str(p).startswith(("literal[", "float", "function", "list[")))
    field = ".".join(str(p) for p in loc)
    if e["type"] == "extra_forbidden":
        close = [".".join([*map(str, loc[:-1]), k])
                 for k in difflib.get_close_matches(str(loc[-1]), _section_fields(loc[:-1]), n=1)]
        if not close and len(loc) == 1:  # a key without its section: `--set budget_s=60`
            close = [f"{s}.{loc[0]}" for s in Config.model_fields if loc[0] in _section_fields((s,))]
        hint = f"; did you mean {close[0]}?" if close else ""
        return f"{field}: unknown key (got {e.get('input')!r}){hint}"
    if e["type"] == "model_type":  # a scalar where a section belongs: `--set train=5`
        keys = _section_fields(loc)
        example = f", e.g. {field}.{keys[0]}" if keys else ""
        return f"{field}: is a section, not a value: set one of its keys{example} (got {e.get('input')!r})"
    msg = e["msg"].removeprefix("Value error, ")
    return f"{field}: {msg}" if e["type"] == "missing" else f"{field}: {msg} (got {e.get('input')!r})"


def _format_errors(err: ValidationError, source: str) -> str:
    return "\n".join([f"invalid config ({source}):"] + [f"  {_format_error(e)}" for e in err.errors()])


def validate(raw: dict, source: str = "config") -> Config:
    # A section whose keys are all commented out (`metrics:` alone) is empty, not an error.
    raw = {k: ({} if v is None and k in Config.model_fields else v) for k, v in raw.items()}
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error: plain YAML keeps
    the last one silently, so `budget_s` written twice would hide which value the run used."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (first at line {first.line + 1}); keep one",
                    key_node.start_mark)
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path) -> dict:
    """The file's top-level mapping, or a ConfigError that names the file and says what is wrong."""
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory; pass a YAML file, e.g. experiments/digits.yaml")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset "
                          f"{err.start}); save it as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read: {err.strerror or err}") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config file {path}: YAML error{where}: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path}: YAML error: {err}") from None
    if raw is None:
        raise ConfigError(f"config file {path} is empty (or only comments): give at least one section, e.g. "
                          f"'train: {{budget_s: 60}}', or write '{{}}' to mean the built-in defaults")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping of sections (run:, dataset:, "
                          f"train:, ...), not a {type(raw).__name__}")
    return raw


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> Config:
    raw: dict = {}
    source = "defaults"
    if path is not None:
        raw = _read_yaml(Path(path))
        source = str(path)
    raw = apply_overrides(raw, overrides or [])
    return validate(raw, source)


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML text (what a run directory's config.yaml holds)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
