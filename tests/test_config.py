"""The experiment schema: YAML loading, dotted overrides, resolved defaults, the content hash, checks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from lth_sweep.config import (
    ExperimentConfig,
    build_experiment,
    dump_yaml,
    load_experiment,
    parse_overrides,
    parse_value,
)
from lth_sweep.errors import UserError

SHIPPED = Path(__file__).resolve().parents[1] / "sweeps" / "experiments" / "mnist1d_mlp.yaml"
TINY_TOTAL = 3 * 35  # iterations per round of the tiny experiment (3 epochs of 35 batches)


def reversed_keys(tree: Any) -> Any:
    """The same data with every mapping's keys in the opposite order."""
    if isinstance(tree, dict):
        return {key: reversed_keys(tree[key]) for key in reversed(list(tree))}
    return tree


def user_error(raw: dict[str, Any], overrides: dict[str, Any] | None = None) -> UserError:
    with pytest.raises(UserError) as info:
        build_experiment(raw, overrides)
    return info.value


# ------------------------------------------------------------------------------------------ loading


def test_load_yaml_file(tmp_path: Path, raw_config: dict[str, Any]) -> None:
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(raw_config))
    config = load_experiment(path)
    assert config.model.name == "mlp" and config.model.widths == [32]
    assert config.train.optimizer == "adam" and config.train.lr == 0.002 and config.train.epochs == 3
    assert config.train.iterations is None and config.prune.rounds == 3 and config.device == "cpu"
    assert config.dataset.root == raw_config["dataset"]["root"]


def test_load_shipped_mnist1d_file() -> None:
    config = load_experiment(SHIPPED)
    assert config.dataset.name == "mnist1d" and config.model.widths == [256, 256]
    assert config.prune.rate == 0.3 and config.output_rate() == 0.15 and config.prune.rounds == 6
    assert config.iterations_per_round(config.steps_per_epoch()) == 20 * 35


def test_load_with_overrides(tmp_path: Path, raw_config: dict[str, Any]) -> None:
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(raw_config))
    config = load_experiment(path, parse_overrides(["prune.rate=0.35", "model.widths=[8, 4]"]))
    assert config.prune.rate == 0.35 and config.model.widths == [8, 4]


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_experiment(path) == ExperimentConfig()


@pytest.mark.parametrize("text", ["seed: [1, 2\n", "a: b: c\n", "- 1\n- 2\n"])
def test_bad_yaml_files(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_experiment(path)
    assert info.value.key == "experiment" and str(path) in info.value.message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        load_experiment(tmp_path / "nope.yaml")
    assert info.value.key == "experiment" and "nope.yaml" in info.value.message


# ---------------------------------------------------------------------------------------- overrides


def test_parse_overrides_yaml_scalars() -> None:
    parsed = parse_overrides(["prune.rate=0.3", "seed=7", "dataset.download=true", "dataset.name=cifar10",
                              "model.widths=[8, 4]", "train.schedule.milestones=[]", "dataset.val_size=null",
                              " control = reinit", "a.b=x=y"])
    assert parsed == {"prune.rate": 0.3, "seed": 7, "dataset.download": True, "dataset.name": "cifar10",
                      "model.widths": [8, 4], "train.schedule.milestones": [], "dataset.val_size": None,
                      "control": "reinit", "a.b": "x=y"}
    assert isinstance(parsed["seed"], int) and isinstance(parsed["prune.rate"], float)


def test_parse_value_falls_back_to_text() -> None:
    assert parse_value("[1, 2") == "[1, 2"
    assert parse_value("{a: 1") == "{a: 1"


def test_exponent_learning_rate_from_the_command_line() -> None:
    """YAML 1.1 reads `1e-3` as text; the float field must still take it."""
    config = build_experiment({}, parse_overrides(["train.lr=1e-3", "train.weight_decay=5e-4"]))
    assert config.train.lr == 0.001 and config.train.weight_decay == 0.0005


@pytest.mark.parametrize("pair", ["prune.rate", "=0.3", "  =1"])
def test_parse_overrides_rejects_pairs_without_key_or_equals(pair: str) -> None:
    with pytest.raises(UserError) as info:
        parse_overrides([pair])
    assert info.value.key == "--set" and pair in info.value.message


def test_build_experiment_applies_dotted_overrides_and_leaves_raw_alone(raw_config: dict[str, Any]) -> None:
    before = yaml.safe_dump(raw_config)
    config = build_experiment(raw_config, {"prune.rate": 0.5, "train.schedule.name": "step",
                                           "train.schedule.milestones": [50], "rewind.iteration": 20,
                                           "runtime.threads": 1})
    assert config.prune.rate == 0.5 and config.train.schedule.name == "step"
    assert config.train.schedule.milestones == [50] and config.rewind.iteration == 20
    assert config.runtime.threads == 1
    assert config.prune.rounds == 3  # untouched keys keep the file's values
    assert yaml.safe_dump(raw_config) == before


def test_override_creates_missing_section() -> None:
    config = build_experiment({}, {"train.schedule.warmup": 5})
    assert config.train.schedule.warmup == 5


def test_override_through_a_value_is_an_error(raw_config: dict[str, Any]) -> None:
    err = user_error(raw_config, {"seed.value": 1})
    assert err.key == "seed.value"


# ----------------------------------------------------------------------------------------- defaults


@pytest.mark.parametrize("name, val_size, augment", [("mnist1d", 500, False), ("mnist", 5000, False),
                                                     ("fashion_mnist", 5000, False), ("cifar10", 5000, True)])
def test_dataset_defaults_resolved(name: str, val_size: int, augment: bool) -> None:
    config = build_experiment({"dataset": {"name": name}})
    assert config.dataset.val_size == val_size and config.dataset.augment is augment


def test_explicit_dataset_values_kept() -> None:
    config = build_experiment({"dataset": {"name": "cifar10", "val_size": 0, "augment": False}})
    assert config.dataset.val_size == 0 and config.dataset.augment is False


def test_augment_on_mnist1d_is_rejected() -> None:
    err = user_error({"dataset": {"name": "mnist1d", "augment": True}})
    assert err.key.startswith("dataset")


def test_rate_defaults() -> None:
    config = build_experiment({"prune": {"rate": 0.3}})
    assert config.prune.output_rate is None and config.output_rate() == pytest.approx(0.15)
    assert config.prune.conv_rate is None and config.conv_rate() == 0.3


def test_explicit_rates() -> None:
    config = build_experiment({"prune": {"rate": 0.3, "conv_rate": 0.1, "output_rate": 0.0}})
    assert config.conv_rate() == 0.1 and config.output_rate() == 0.0


def test_length_defaults() -> None:
    assert build_experiment({}).train.epochs == 10
    config = build_experiment({"train": {"iterations": 500}})
    assert config.train.epochs is None and config.iterations_per_round(35) == 500
    assert build_experiment({"train": {"epochs": 4}}).iterations_per_round(35) == 140


def test_epochs_and_iterations_together_rejected() -> None:
    assert user_error({"train": {"epochs": 2, "iterations": 100}}).key.startswith("train")


def test_rewind_epoch_and_iteration_together_rejected() -> None:
    assert user_error({"rewind": {"epoch": 1, "iteration": 5}}).key.startswith("rewind")


def test_rewind_resolution() -> None:
    config = build_experiment({"train": {"epochs": 4}, "rewind": {"epoch": 2}})
    assert config.rewind_iteration(35) == 70
    assert build_experiment({"rewind": {"iteration": 12}}).rewind_iteration(35) == 12
    assert build_experiment({}).rewind_iteration(35) == 0


# --------------------------------------------------------------------------------------------- hash


def test_hash_stable_across_key_order(raw_config: dict[str, Any]) -> None:
    config = build_experiment(raw_config)
    assert build_experiment(reversed_keys(raw_config)).config_hash() == config.config_hash()
    assert len(config.config_hash()) == 12 and int(config.config_hash(), 16) >= 0


def test_hash_survives_yaml_round_trip(tmp_path: Path, raw_config: dict[str, Any]) -> None:
    config = build_experiment(raw_config, {"prune.strategy": "global", "control": "reinit"})
    path = tmp_path / "dumped.yaml"
    path.write_text(dump_yaml(config))
    again = load_experiment(path)
    assert again == config and again.config_hash() == config.config_hash()


def test_resolved_default_hashes_like_explicit_value(raw_config: dict[str, Any]) -> None:
    explicit = build_experiment(raw_config, {"dataset.val_size": 500})
    assert explicit.config_hash() == build_experiment(raw_config).config_hash()


@pytest.mark.parametrize("overrides", [{"device": "auto"}, {"device": "cuda"}, {"runtime.threads": 3},
                                       {"runtime.cuda_graph": False, "runtime.bf16": False},
                                       {"runtime.checkpoint_every_epoch": False}, {"prune.rounds": 4}])
def test_hash_ignores_device_runtime_and_rounds(raw_config: dict[str, Any], overrides: dict[str, Any]) -> None:
    base = build_experiment(raw_config)
    changed = build_experiment(raw_config, overrides)
    assert changed != base
    assert changed.config_hash() == base.config_hash()


@pytest.mark.parametrize("overrides", [{"seed": 1}, {"prune.rate": 0.25}, {"prune.output_rate": 0.0},
                                       {"train.lr": 0.003}, {"model.widths": [33]}, {"dataset.val_size": 400},
                                       {"rewind.iteration": 5}, {"control": "random_mask"},
                                       {"prune.strategy": "global"}, {"replicates": 2},
                                       {"train.schedule.warmup": 3}])
def test_hash_changes_with_science_keys(raw_config: dict[str, Any], overrides: dict[str, Any]) -> None:
    assert build_experiment(raw_config, overrides).config_hash() != build_experiment(raw_config).config_hash()


# --------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("overrides, key", [
    ({"rewind.iteration": TINY_TOTAL}, "rewind.iteration"),
    ({"rewind.iteration": 10_000}, "rewind.iteration"),
    ({"rewind": {"epoch": 3}}, "rewind.epoch"),
    ({"train.epochs": None, "train.iterations": 50, "rewind.iteration": 50}, "rewind.iteration"),
])
def test_rewind_past_the_end(raw_config: dict[str, Any], overrides: dict[str, Any], key: str) -> None:
    err = user_error(raw_config, overrides)
    assert err.key == key and "past the end" in err.message


@pytest.mark.parametrize("overrides", [{"rewind.iteration": TINY_TOTAL - 1}, {"rewind": {"epoch": 2}},
                                       {"train.epochs": None, "train.iterations": 50, "rewind.iteration": 49}])
def test_last_rewind_points_inside_training_accepted(raw_config: dict[str, Any],
                                                     overrides: dict[str, Any]) -> None:
    build_experiment(raw_config, overrides)


@pytest.mark.parametrize("overrides, key", [
    ({"foo": 1}, "foo"),
    ({"train.lrr": 0.1}, "train.lrr"),
    ({"train.schedule.gama": 0.1}, "train.schedule.gama"),
    ({"model.name": "resnet99"}, "model.name"),
    ({"dataset.name": "imagenet"}, "dataset.name"),
    ({"prune.rate": 0}, "prune.rate"),
    ({"prune.rate": 1}, "prune.rate"),
    ({"prune.rate": 1.5}, "prune.rate"),
    ({"prune.output_rate": 1.0}, "prune.output_rate"),
    ({"prune.rounds": 0}, "prune.rounds"),
    ({"train.batch_size": 0}, "train.batch_size"),
    ({"train.batch_size": 5000}, "train.batch_size"),
    ({"dataset.val_size": 4000}, "dataset.val_size"),
    ({"train.schedule.milestones": [0]}, "train.schedule.milestones"),
    ({"model.widths": [0]}, "model"),
    ({"device": "tpu"}, "device"),
    ({"control": "shuffle"}, "control"),
    ({"replicates": 0}, "replicates"),
])
def test_bad_values_name_their_key(raw_config: dict[str, Any], overrides: dict[str, Any], key: str) -> None:
    err = user_error(raw_config, overrides)
    assert err.key == key or err.key.startswith(f"{key}."), err  # a more precise key is fine too
    assert str(err).startswith(f"{err.key}: ") and "\n" not in str(err)


def test_literal_errors_list_the_allowed_values(raw_config: dict[str, Any]) -> None:
    err = user_error(raw_config, {"model.name": "resnet99"})
    assert "allowed" in err.message and "lenet_300_100" in err.message


def test_errors_from_a_nested_prefix() -> None:
    with pytest.raises(UserError) as info:
        build_experiment({"train": {"lrr": 1}}, prefix="experiment")
    assert info.value.key == "experiment.train.lrr"


def test_assignment_is_validated(make_config: Callable[..., ExperimentConfig]) -> None:
    config = make_config()
    with pytest.raises(ValueError):
        config.train.lr = -1.0  # validate_assignment: the typed limits hold after construction too


@pytest.mark.parametrize("key,value", [("train.lr", float("inf")), ("train.momentum", float("nan")),
                                       ("prune.rate", float("inf")), ("train.weight_decay", float("-inf"))])
def test_infinite_and_nan_values_are_refused(key: str, value: float) -> None:
    """lr .inf trained to nan losses and val_acc at chance in every round, exit 0."""
    err = user_error({}, {key: value})
    assert err.key == key and "finite" in err.message, err


@pytest.mark.parametrize("key", ["seed", "replicates", "train.lr", "train.iterations", "dataset.val_size",
                                 "runtime.threads"])
def test_a_boolean_is_not_a_number(key: str) -> None:
    """YAML `seed: true` used to train seed 1 (pydantic reads a bool as 1); a bool key takes one still."""
    err = user_error({}, {key: True})
    assert err.key == key and "true is a boolean; allowed:" in err.message, err
    assert build_experiment({}, {"runtime.cuda_graph": True, "dataset.augment": False}).runtime.cuda_graph
