"""The experiment schema: YAML in, dotted `--set` overrides, validation, and a stable content hash.

Every hyperparameter of one IMP trial is declared here once, as a typed field. Time points are in
iterations (optimizer steps) unless a key says `epoch(s)`; `resolved_*` helpers convert using the
dataset's steps per epoch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from types import UnionType
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from lth_sweep.errors import UserError, not_text

DATASETS = ("mnist1d", "mnist", "fashion_mnist", "cifar10")
MODELS = ("mlp", "lenet_300_100", "conv2", "conv4", "conv6", "resnet20", "vgg16")
DEFAULT_VAL_SIZE = {"mnist1d": 500, "mnist": 5000, "fashion_mnist": 5000, "cifar10": 5000}
TRAIN_EXAMPLES = {"mnist1d": 4000, "mnist": 60000, "fashion_mnist": 60000, "cifar10": 50000}


class NumbersNotBooleans(BaseModel):
    """A YAML `true` where a number belongs is refused (pydantic would read it as 1: `seed: true` is seed 1)."""

    @field_validator("*", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            accepted = set(get_args(annotation)) if isinstance(annotation, UnionType) else {annotation}
            if bool not in accepted and accepted & {int, float}:
                raise ValueError(f"{str(value).lower()} is a boolean; allowed: "
                                 f"{'a number' if float in accepted else 'an integer'}")
        return value


class Section(NumbersNotBooleans):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DatasetConfig(Section):
    name: Literal["mnist1d", "mnist", "fashion_mnist", "cifar10"] = "mnist1d"
    root: str = "~/.cache/lth_sweep/data"
    download: bool = False
    val_size: int | None = Field(default=None, ge=0,
                                 description="held out of the training set; None = 5000 (500 for mnist1d)")
    augment: bool | None = Field(default=None, description="pad-4 crop + flip; None = on for cifar10 only")

    @model_validator(mode="after")
    def _default_val_size(self) -> DatasetConfig:
        if self.val_size is None:
            object.__setattr__(self, "val_size", DEFAULT_VAL_SIZE[self.name])
        if self.augment is None:
            object.__setattr__(self, "augment", self.name == "cifar10")
        if self.augment and self.name == "mnist1d":
            raise UserError("dataset.augment", "pad-4 crop and flip need image data; mnist1d is 1-D (allowed: false)")
        return self


class ModelConfig(Section):
    name: Literal["mlp", "lenet_300_100", "conv2", "conv4", "conv6", "resnet20", "vgg16"] = "mlp"
    widths: list[int] = Field(default_factory=lambda: [100, 100], description="hidden widths of `mlp`")

    @model_validator(mode="after")
    def _positive_widths(self) -> ModelConfig:
        if any(w < 1 for w in self.widths):
            raise UserError("model.widths", f"{self.widths}: every width must be a positive integer")
        return self


class ScheduleConfig(Section):
    """Learning-rate schedule; milestones and warmup are in iterations from the start of training."""

    name: Literal["constant", "step"] = "constant"
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(default=0.1, gt=0)
    warmup: int = Field(default=0, ge=0, description="linear warmup iterations")


class TrainConfig(Section):
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = Field(default=1e-3, gt=0)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    batch_size: int = Field(default=100, ge=1)
    epochs: int | None = Field(default=None, ge=1)
    iterations: int | None = Field(default=None, ge=1)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    eval_every: int = Field(default=100, ge=1, description="iterations between validation evaluations")

    @model_validator(mode="after")
    def _one_length(self) -> TrainConfig:
        if self.epochs is None and self.iterations is None:
            object.__setattr__(self, "epochs", 10)
        if self.epochs is not None and self.iterations is not None:
            raise UserError("train.iterations", "set either train.epochs or train.iterations, not both")
        return self


class PruneConfig(Section):
    strategy: Literal["layerwise", "global"] = "layerwise"
    rate: float = Field(default=0.2, gt=0, lt=1, description="fc rate (layerwise) or global rate")
    conv_rate: float | None = Field(default=None, gt=0, lt=1, description="None = rate")
    output_rate: float | None = Field(default=None, ge=0, lt=1, description="None = rate/2; 0 = not pruned")
    rounds: int = Field(default=5, ge=1, le=254, description="rounds trained, the dense round 0 included; left out "
                        "of the config hash, so a finished trial can be extended with more rounds")


class RewindConfig(Section):
    epoch: int | None = Field(default=None, ge=0)
    iteration: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_point(self) -> RewindConfig:
        if self.epoch is not None and self.iteration is not None:
            raise UserError("rewind.iteration", "set either rewind.epoch or rewind.iteration, not both")
        return self


class StabilityConfig(Section):
    """Instability analysis (Frankle et al. 2020): a copy of each round's network, trained from the same
    start under the same mask with another data order, and the test error on the line between the two."""

    points: int = Field(default=0, ge=0, description="0 = off; otherwise >= 3 evenly spaced points, ends included")
    bn_batches: int = Field(default=10, ge=1, description="training batches that re-estimate BatchNorm "
                                                          "statistics at each point")

    @model_validator(mode="after")
    def _off_or_three(self) -> StabilityConfig:
        if self.points in (1, 2):
            raise UserError("stability.points", f"{self.points}: allowed: 0 (off) or at least 3 (the two ends "
                                                "and a point between them)")
        return self


def machine_cpus() -> int:
    """The CPUs this process may use (its affinity mask, as Ray counts them): at most this many `runtime.threads`."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class RuntimeConfig(Section):
    """How to run, not what to compute: excluded from the config hash."""

    threads: int = Field(default=1, ge=1, description="torch CPU threads (one thread per trial is the safe default)")
    cuda_graph: bool = True
    bf16: bool = Field(default=True, description="bf16 autocast for conv nets on CUDA")
    tf32: bool = Field(default=True, description="TF32 matmuls and convolutions on CUDA")
    channels_last: bool = Field(default=True, description="NHWC activations for single-model conv nets on CUDA")
    deterministic: bool = Field(default=False, description="deterministic cuDNN algorithms (no autotuning) on CUDA")
    checkpoint_every_epoch: bool = True
    pack_stacking: Literal["auto", "stacked", "sequential"] = Field(
        default="auto", description="how a pack's members train: as one stacked population, or one after another "
                                    "(each phase); auto = stacked on CUDA, sequential on a CPU, where a stack is "
                                    "slower per model than the models one by one (benchmarks/RESULTS.md)")


class ExperimentConfig(Section):
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    replicates: int = Field(default=1, ge=1, description="seeds seed..seed+K-1 trained together as one stack")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    rewind: RewindConfig = Field(default_factory=RewindConfig)
    control: Literal["none", "reinit", "random_mask"] = "none"
    stability: StabilityConfig = Field(default_factory=StabilityConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @model_validator(mode="after")
    def _check_schedule(self) -> ExperimentConfig:
        self.check_schedule(self.steps_per_epoch())
        return self

    def steps_per_epoch(self, train_examples: int | None = None) -> int:
        """Full batches per epoch (the last partial batch of each shuffled epoch is dropped)."""
        if train_examples is None:
            train_examples = TRAIN_EXAMPLES[self.dataset.name] - (self.dataset.val_size or 0)
        return train_examples // self.train.batch_size

    def science_dict(self) -> dict[str, Any]:
        """The keys that determine the results (device, runtime knobs and where data is read from left out).

        `prune.rounds` is left out too (as open_lth leaves out its number of levels): round r of a trial does
        not depend on how many rounds follow it, so a longer run of the same config extends a shorter one."""
        science = self.model_dump(mode="json", exclude={"device": True, "runtime": True,
                                                        "dataset": {"root", "download"}, "prune": {"rounds"}})
        if not self.stability.points:  # off: the hash of every experiment from before the key existed
            science.pop("stability")
        return science

    def config_hash(self) -> str:
        text = json.dumps(self.science_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def conv_rate(self) -> float:
        return self.prune.rate if self.prune.conv_rate is None else self.prune.conv_rate

    def output_rate(self) -> float:
        return self.prune.rate / 2 if self.prune.output_rate is None else self.prune.output_rate

    def iterations_per_round(self, steps_per_epoch: int) -> int:
        t = self.train
        return t.iterations if t.iterations is not None else t.epochs * steps_per_epoch

    def rewind_iteration(self, steps_per_epoch: int) -> int:
        r = self.rewind
        if r.epoch is not None:
            return r.epoch * steps_per_epoch
        return r.iteration or 0

    def check_schedule(self, steps_per_epoch: int) -> None:
        """Checks that need the dataset's size: the rewind point must fall inside training."""
        n_train = TRAIN_EXAMPLES[self.dataset.name]
        if self.dataset.val_size >= n_train:
            raise UserError("dataset.val_size", f"must be smaller than the {n_train} training examples "
                                                f"of {self.dataset.name}")
        if steps_per_epoch < 1:
            raise UserError("train.batch_size", f"{self.train.batch_size} is larger than the training set "
                                                f"of {self.dataset.name}")
        total = self.iterations_per_round(steps_per_epoch)
        rewind = self.rewind_iteration(steps_per_epoch)
        if rewind >= total:
            key = "rewind.epoch" if self.rewind.epoch is not None else "rewind.iteration"
            raise UserError(key, f"rewind point is iteration {rewind}, past the end of training "
                                 f"({total} iterations); allowed: 0 <= rewind < {total}")
        if any(m <= 0 for m in self.train.schedule.milestones):
            raise UserError("train.schedule.milestones", "milestones must be positive iterations")


# --------------------------------------------------------------------------------------- loading


def _format_validation_error(err: ValidationError, prefix: str = "") -> UserError:
    first = err.errors()[0]
    key = ".".join(part for part in [prefix, *(str(p) for p in first["loc"])] if part)
    kind = first["type"]
    if kind == "extra_forbidden":
        return UserError(key, "unknown key; allowed keys are in the experiment schema (see README)")
    msg = first["msg"].removeprefix("Value error, ")
    if kind in ("literal_error", "enum"):
        msg = msg.replace("Input should be", "allowed:")
    return UserError(key or "config", msg)


def parse_value(text: str) -> Any:
    """`--set` values are YAML scalars: 0.1, true, [1, 2], cifar10."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def set_dotted(tree: dict[str, Any], dotted_key: str, value: Any) -> None:
    parts = dotted_key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(dotted_key, f"'{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError("--set", f"'{pair}' is not KEY=VALUE (for example --set prune.rate=0.3)")
        overrides[key.strip()] = parse_value(value)
    return overrides


def read_yaml(path: str | Path, key: str = "file") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(key, f"{path} does not exist or is not a file")
    try:
        data = yaml.safe_load(path.read_text())
    except UnicodeDecodeError as err:
        raise not_text(path, err) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(key, f"{path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(key, f"{path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def build_experiment(raw: dict[str, Any], overrides: dict[str, Any] | None = None,
                     prefix: str = "") -> ExperimentConfig:
    tree = json.loads(json.dumps(raw))  # deep copy of plain data
    for key, value in (overrides or {}).items():
        set_dotted(tree, key, value)
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as err:
        raise _format_validation_error(err, prefix) from None


def load_experiment(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    return build_experiment(read_yaml(path, "experiment"), overrides)


def load_saved_experiment(path: str | Path) -> ExperimentConfig:
    """A trial's own config.yaml, written by us: one that is empty or does not validate was damaged, which the
    UserError says, naming the file (not a key of it, nor "a different experiment")."""
    try:
        data = read_yaml(path, str(path))
        if not data:
            raise UserError("", "it is empty")
        return build_experiment(data)
    except UserError as err:
        reason = err.message if err.key in ("", str(path)) else str(err)
        raise UserError(str(path), f"cannot be read as the trial's experiment ({reason}): it is damaged; put back "
                                   "an intact copy") from None


def dump_yaml(config: ExperimentConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
