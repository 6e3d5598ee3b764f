"""Sweep files: the shipped ones load; bad ones stop `lth-sweep launch` with exit 2, one stderr line naming
the key, nothing written and no Ray started. No Ray here: every bad file fails before Ray would start.

The CLI cases run as real subprocesses, three at a time in a module fixture: `launch` imports the engine
(torch) before it validates the file, ~2-3 s apiece on 2 cores.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import sweep_helpers as h

from lth_sweep.errors import UserError
from lth_sweep.sweep.schema import SweepConfig, load_sweep

REPO = Path(__file__).resolve().parents[1]
SHIPPED_SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))
TINY_TOTAL = 3 * 35  # iterations per round of the tiny experiment: 3 epochs of 35 batches


class Case(NamedTuple):
    change: Callable[[dict[str, Any]], Any]  # edits the sweep tree in place
    key: str  # the key UserError must name (in-process)
    words: tuple[str, ...] = ()  # and words the CLI's line must hold
    args: tuple[str, ...] = ()  # extra CLI arguments
    text: str | None = None  # the sweep file's text instead of the tree
    command: str = "launch"  # or "resume" / "status" of a sweep folder that does not exist (the storage)


def space(**entries: Any) -> Callable[[dict[str, Any]], None]:
    def change(tree: dict[str, Any]) -> None:
        tree["search"]["space"].update({key.replace("__", "."): dist for key, dist in entries.items()})

    return change


def search(**settings: Any) -> Callable[[dict[str, Any]], None]:
    return lambda tree: tree["search"].update(settings)


def pareto_with_asha(tree: dict[str, Any]) -> None:
    tree["objective"] = {"name": "pareto"}
    tree["scheduler"] = {"name": "asha"}


BAD = {
    "space_unknown_key": Case(space(prune__ratee={"uniform": [0.1, 0.3]}), "search.space.prune.ratee",
                              ("unknown key",)),
    "bounds_wrong_way_round": Case(space(prune__rate={"uniform": [0.5, 0.1]}), "search.space.prune.rate",
                                   ("wrong way round",)),
    "prune_rate_outside_0_1": Case(space(prune__rate={"uniform": [0.1, 1.5]}), "search.space.prune.rate",
                                   ("1.5",)),
    "num_samples_0": Case(search(num_samples=0), "search.num_samples"),
    "unknown_sampler": Case(search(sampler="cmaes"), "search.sampler", ("tpe", "nsga2")),
    "unknown_objective": Case(lambda t: t["objective"].update(name="accuracy"), "objective.name",
                              ("matching_density", "pareto")),
    "unknown_top_level_key": Case(lambda t: t.update(searchh={"num_samples": 2}), "searchh", ("unknown key",)),
    "loguniform_low_zero": Case(space(train__lr={"loguniform": [0, 0.01]}), "search.space.train.lr",
                                ("loguniform",)),
    "loguniform_low_negative": Case(space(train__lr={"loguniform": [-0.1, 0.01]}), "search.space.train.lr",
                                    ("loguniform",)),
    # whole-number bounds pass as integers; the draws between them would not, and every trial would fail
    "uniform_over_an_integer_key": Case(space(rewind__iteration={"uniform": [0, 50]}),
                                        "search.space.rewind.iteration", ("uniform", "int: [0, 50]")),
    "loguniform_over_an_integer_key": Case(space(train__batch_size={"loguniform": [10, 100]}),
                                           "search.space.train.batch_size", ("loguniform", "int: [10, 100]")),
    # a fixed value of a searched key would be lost: every trial draws its own
    "set_and_searched": Case(lambda t: t.update(set={"prune.rate": 0.3}), "set.prune.rate",
                             ("is searched too", "search.space.prune.rate=null", "--set set.prune.rate=null")),
    "drop_a_key_the_file_does_not_set": Case(lambda t: t.update(set={"prune.rounds": 2}), "set.train.lr",
                                             ("only drops a key of the sweep file's set:", "prune.rounds"),
                                             args=("--set", "set.train.lr=null")),
    "set_a_file_set_key_to_a_value": Case(lambda t: t.update(set={"prune.rounds": 2}), "set.prune.rounds",
                                          ("allowed: null", "--set KEY=VALUE"), args=("--set", "set.prune.rounds=3")),
    "set_flag_on_a_searched_key": Case(lambda t: None, "prune.rate", ("is searched too",),
                                       args=("--set", "prune.rate=0.3")),
    "rewind_past_end_of_training": Case(space(rewind__iteration={"int": [0, TINY_TOTAL]}),
                                        "search.space.rewind.iteration", (str(TINY_TOTAL),)),
    # The key is reported as "sweep"; the message itself names the scheduler and the objective.
    "pareto_with_asha": Case(pareto_with_asha, "scheduler.name", ("asha", "pareto")),
    "malformed_yaml": Case(lambda t: None, "sweep", ("not valid YAML", "at line"),
                           text="search:\n  num_samples: [4\nobjective: {name: pareto}\n"),
    "missing_experiment_file": Case(lambda t: t.update(experiment="experiments/missing.yaml"), "experiment",
                                    ("missing.yaml", "does not exist")),
    "typo_in_a_set_override": Case(lambda t: None, "search.num_sample", ("unknown key",),
                                   args=("--set", "search.num_sample=2")),
    "bad_name": Case(lambda t: None, "name", ("letters, digits",), args=("--name", "my sweep")),
    "resume_of_no_sweep": Case(lambda t: None, "PATH", ("sweep.json is missing",), command="resume"),
    "status_of_no_sweep": Case(lambda t: None, "PATH", ("sweep.json is missing",), command="status"),
}
LAUNCH_ONLY = sorted(name for name, case in BAD.items() if not case.args and case.command == "launch")


def write_case(directory: Path, data_root: Path, case: Case) -> Path:
    tree = h.sweep_tree(data_root)
    case.change(tree)
    path = h.write_sweep(directory / "sweep.yaml", tree)
    if case.text is not None:
        path.write_text(case.text)
    return path


class Outcome(NamedTuple):
    result: h.Result
    storage: Path
    ray_tmp: Path


@pytest.fixture(scope="module")
def cli_outcomes(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> dict[str, Outcome]:
    """`lth-sweep launch BAD.yaml --storage S` for every bad case, with RAY_TMPDIR pointed at a folder of
    its own: if Ray started, it would create that folder."""
    jobs = {}
    for name, case in BAD.items():
        directory = tmp_path_factory.mktemp(name)
        sweep_file = write_case(directory, data_root, case)
        storage, ray_tmp = directory / "storage", directory / "raytmp"
        env = h.cli_env(ray_tmp)
        jobs[name] = (sweep_file, storage, ray_tmp, env, directory)

    def run(name: str) -> Outcome:
        sweep_file, storage, ray_tmp, env, directory = jobs[name]
        case = BAD[name]
        argv = ("launch", sweep_file, "--storage", storage, *case.args) if case.command == "launch" else (
            case.command, storage)
        result = h.run_cli(*argv, cwd=directory, env=env, timeout=180)
        return Outcome(result, storage, ray_tmp)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(jobs, pool.map(run, jobs), strict=True))


# ------------------------------------------------------------------------------------ good files


@pytest.mark.parametrize("path", SHIPPED_SWEEPS, ids=[p.name for p in SHIPPED_SWEEPS])
def test_shipped_sweep_files_load(path: Path) -> None:
    sweep, experiment = load_sweep(path)
    assert sweep.name == path.stem
    assert sweep.search.num_samples >= 1 and sweep.search.space
    assert experiment["dataset"]["name"]


def test_quickstart_searches_rate_rewind_and_lr() -> None:
    sweep, experiment = load_sweep(REPO / "sweeps" / "quickstart.yaml")
    assert set(sweep.search.space) == {"prune.rate", "rewind.iteration", "train.lr"}
    assert sweep.objective.name == "matching_density" and sweep.search.sampler == "tpe"
    assert experiment["dataset"]["name"] == "mnist1d"
    assert experiment["prune"]["rounds"] >= 2  # the experiment file plus the sweep's `set:`


def test_overrides_reach_sweep_and_experiment(tmp_path: Path, data_root: Path) -> None:
    path = h.write_sweep(tmp_path / "s.yaml", h.sweep_tree(data_root))
    sweep, experiment = load_sweep(path, {"search.num_samples": 2, "prune.rounds": 2, "search.sampler": "tpe"})
    assert sweep.search.num_samples == 2 and sweep.search.sampler == "tpe"
    assert experiment["prune"]["rounds"] == 2
    assert sweep.search.space["rewind.iteration"].to_tune().upper == 51  # int bounds are inclusive


def test_a_sweep_without_a_validation_set_is_refused(tmp_path: Path, data_root: Path) -> None:
    """Every objective scores val_acc, which dataset.val_size 0 leaves nan (a `run` may go without one)."""
    path = h.write_sweep(tmp_path / "s.yaml", h.sweep_tree(data_root))
    with pytest.raises(UserError) as err:
        load_sweep(path, {"dataset.val_size": 0})
    assert err.value.key == "dataset.val_size" and "no validation set" in err.value.message


def test_a_sweep_file_round_trips_through_the_spec(tmp_path: Path, data_root: Path) -> None:
    """What launch stores in sweep.json validates again (resume and status rebuild the sweep from it)."""
    sweep, _ = load_sweep(h.write_sweep(tmp_path / "s.yaml", h.sweep_tree(data_root)))
    again = SweepConfig.model_validate(json.loads(json.dumps(sweep.model_dump(mode="json", by_alias=True))))
    assert again == sweep


# ------------------------------------------------------------------------------------ bad files


@pytest.mark.parametrize("name", LAUNCH_ONLY)
def test_bad_sweep_file_names_the_key(name: str, tmp_path: Path, data_root: Path) -> None:
    case = BAD[name]
    with pytest.raises(UserError) as info:
        load_sweep(write_case(tmp_path, data_root, case))
    assert info.value.key == case.key, str(info.value)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_sweep_file_exits_2_with_one_line_and_launches_nothing(name: str,
                                                                   cli_outcomes: dict[str, Outcome]) -> None:
    case = BAD[name]
    result, storage, ray_tmp = cli_outcomes[name]
    assert result.returncode == 2, result.explain()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.explain()
    line = lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert line.startswith("lth-sweep: error: "), line
    assert case.key in line, line
    for word in case.words:
        assert word in line, line
    assert result.stdout == "", result.explain()  # not even the "# sweep ..." banner
    assert not storage.exists(), f"{storage} was created"
    assert not ray_tmp.exists(), "Ray was started (its temp dir exists)"


def test_mixed_corner_of_the_space_is_checked(tmp_path: Path, data_root: Path) -> None:
    tree = h.sweep_tree(data_root, space={"rewind.iteration": {"int": [0, 100]}, "train.epochs": {"int": [1, 3]}})
    with pytest.raises(UserError) as info:
        load_sweep(h.write_sweep(tmp_path / "s.yaml", tree))
    assert info.value.key.startswith("search.space.")


def test_existing_sweep_name_exits_2_and_says_how_to_resume(tmp_path: Path, data_root: Path) -> None:
    """A sweep folder with a sweep.json (a placeholder written here: only its existence matters to launch;
    test_sweep.py does the same against a real finished sweep)."""
    sweep_file = h.write_sweep(tmp_path / "tiny.yaml", h.sweep_tree(data_root))
    existing = tmp_path / "storage" / "tiny"
    existing.mkdir(parents=True)
    (existing / "sweep.json").write_text("{}")
    ray_tmp = tmp_path / "raytmp"
    result = h.run_cli("launch", sweep_file, "--storage", tmp_path / "storage", cwd=tmp_path,
                       env=h.cli_env(ray_tmp), timeout=180)
    assert result.returncode == 2, result.explain()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.explain()
    assert f"lth-sweep resume {existing}" in lines[0] and "--name" in lines[0], lines[0]
    assert [p.name for p in existing.iterdir()] == ["sweep.json"] and (existing / "sweep.json").read_text() == "{}"
    assert not ray_tmp.exists(), "Ray was started"


def test_set_can_change_the_range_of_a_searched_key(tmp_path: Path, data_root: Path) -> None:
    """README: `launch --set` takes sweep keys and experiment keys alike."""
    path = h.write_sweep(tmp_path / "s.yaml", h.sweep_tree(data_root))
    sweep, _ = load_sweep(path, {"search.space.prune.rate.uniform": [0.1, 0.2]})
    assert sweep.search.space["prune.rate"].uniform == (0.1, 0.2)


def test_a_searched_key_can_be_dropped_and_fixed_from_the_command_line(tmp_path: Path, data_root: Path) -> None:
    path = h.write_sweep(tmp_path / "s.yaml", h.sweep_tree(data_root))
    sweep, experiment = load_sweep(path, {"search.space.prune.rate": None, "prune.rate": 0.3})
    assert "prune.rate" not in sweep.search.space and "rewind.iteration" in sweep.search.space
    assert experiment["prune"]["rate"] == 0.3


def test_a_key_the_sweep_file_fixes_can_be_searched_from_the_command_line(tmp_path: Path, data_root: Path) -> None:
    """The shipped quickstart fixes prune.rounds in its `set:`; `--set set.prune.rounds=null` frees it to be searched
    (before, no --set could, and the hint said to drop the searched key instead)."""
    tree = h.sweep_tree(data_root, rounds=3)
    tree["set"] = {"prune.rounds": 2, "train.epochs": 2}
    path = h.write_sweep(tmp_path / "s.yaml", tree)
    sweep, experiment = load_sweep(path, {"search.space.prune.rounds.int": [2, 3], "set.prune.rounds": None})
    assert sweep.set == {"train.epochs": 2} and sweep.search.space["prune.rounds"].integer == (2, 3)
    assert experiment["prune"]["rounds"] == 3 and experiment["train"]["epochs"] == 2  # the file's experiment value
    with pytest.raises(UserError, match="--set set.prune.rounds=null") as info:
        load_sweep(path, {"search.space.prune.rounds.int": [2, 3]})
    assert info.value.key == "set.prune.rounds"


def test_pack_auto_is_resolved_at_launch_to_one_on_a_cpu(tmp_path: Path, data_root: Path) -> None:
    """`search.pack: auto` becomes a number in the launch spec (resume and the trials read that number)."""
    from lth_sweep.sweep.launch import prepare_launch

    sweep, experiment = load_sweep(h.write_sweep(tmp_path / "s.yaml", h.sweep_tree(data_root)),
                                   {"search.pack": "auto"})
    assert sweep.search.pack == "auto"
    spec = prepare_launch(sweep, experiment, str(tmp_path / "storage"), "auto")
    assert spec.sweep.search.pack == 1


@pytest.mark.parametrize("key", ["search.num_samples", "search.seed", "max_failures", "objective.tolerance"])
def test_a_boolean_is_not_a_number_in_a_sweep_file(key: str, tmp_path: Path, data_root: Path) -> None:
    with pytest.raises(UserError) as info:
        load_sweep(h.write_sweep(tmp_path / "sweep.yaml", h.sweep_tree(data_root)), {key: False})
    assert info.value.key == key and "false is a boolean; allowed:" in info.value.message, str(info.value)


def test_asha_whose_first_rung_is_past_the_last_round_is_refused(tmp_path: Path, data_root: Path) -> None:
    tree = h.sweep_tree(data_root, rounds=3)
    tree["scheduler"] = {"name": "asha", "grace_rounds": 4}
    with pytest.raises(UserError) as info:
        load_sweep(h.write_sweep(tmp_path / "sweep.yaml", tree))
    assert info.value.key == "scheduler.grace_rounds" and "allowed: 1 to 3" in info.value.message, str(info.value)
    searched = {"prune.rounds": {"choice": [2, 4]}}  # the top of a searched round count is the last round
    load_sweep(h.write_sweep(tmp_path / "searched.yaml", {**tree, "search": {**tree["search"], "space": searched}}))
    load_sweep(h.write_sweep(tmp_path / "fifo.yaml", tree), {"scheduler.name": "fifo"})
