"""The pieces of `search.pack` that need no sweep: ASHA's rule over members, the pack size `auto` picks, member
views of Tune trials, what the pack searcher passes on to Optuna, a pack's checkpoint folder."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from ray.tune.schedulers import TrialScheduler
from ray.tune.schedulers.async_hyperband import _Bracket

from lth_sweep.config import build_experiment
from lth_sweep.sweep.optuna_search import PackSearcher
from lth_sweep.sweep.pack_trainable import pack_checkpoint
from lth_sweep.sweep.packing import MAX_AUTO_PACK, MemberRungs, auto_pack, member_bytes, members_of, tune_trial_of


@pytest.mark.parametrize(("grace", "rf", "mode"), [(1, 2.0, "min"), (2, 3.0, "max"), (1, 1.5, "min")])
def test_member_rungs_decide_as_rays_asha_bracket(grace: int, rf: float, mode: str) -> None:
    """Random members reporting rounds in a random interleaving get the decisions Ray's own ASHA bracket makes
    for trials reporting the same values (its rewards are the metric times +1 for max, -1 for min)."""
    rng = random.Random(0)
    max_rounds = 8
    ours = MemberRungs(max_rounds, grace, rf, mode)
    theirs = _Bracket(grace, max_rounds, rf, 0)
    sign = 1 if mode == "max" else -1
    alive = {f"m{i}": 0 for i in range(12)}
    stops = 0
    while alive:
        member = rng.choice(sorted(alive))
        alive[member] += 1
        value = rng.choice([rng.random(), rng.random(), 1.0, float("nan")])
        stopped = ours.on_result(member, alive[member], value)
        assert stopped == (theirs.on_result(SimpleNamespace(trial_id=member), alive[member], sign * value)
                           == TrialScheduler.STOP), (member, alive[member], value)
        stops += stopped
        if stopped or alive[member] == max_rounds:
            del alive[member]
    assert stops > 0


def test_auto_pack_is_one_on_a_cpu_and_fits_memory_on_a_gpu() -> None:
    lenet = build_experiment({"dataset": {"name": "mnist"}, "model": {"name": "lenet_300_100"},
                              "train": {"batch_size": 60}})
    vgg = build_experiment({"dataset": {"name": "cifar10"}, "model": {"name": "vgg16"}, "train": {"batch_size": 128}})
    assert auto_pack(lenet, gpu_fraction=0, num_samples=100) == 1
    assert auto_pack(lenet, gpu_fraction=1, num_samples=100) == MAX_AUTO_PACK  # ~8 MiB a member
    assert auto_pack(lenet, gpu_fraction=1, num_samples=5) == 5
    assert 1 <= auto_pack(vgg, gpu_fraction=0.25, num_samples=100) < auto_pack(vgg, gpu_fraction=1, num_samples=100)
    assert member_bytes(vgg, (3, 32, 32)) > 100 * member_bytes(lenet, (1, 28, 28))
    two = build_experiment({"dataset": {"name": "mnist"}, "model": {"name": "lenet_300_100"}, "replicates": 2})
    assert member_bytes(two, (1, 28, 28)) == 2 * member_bytes(two.model_copy(update={"replicates": 1}), (1, 28, 28))


def test_members_of_a_pack_trial_and_of_a_plain_one() -> None:
    config = {"pack": [{"prune.rate": 0.2}, {"prune.rate": 0.3}]}
    result = {"members": [{"rounds_done": 2, "objective": 0.5}, {}]}
    views = members_of("abc", config, result)
    assert [(v.member_id, v.params, v.result) for v in views] == [
        ("abc_0", {"prune.rate": 0.2}, {"rounds_done": 2, "objective": 0.5}), ("abc_1", {"prune.rate": 0.3}, {})]
    assert [(v.member_id, v.params) for v in members_of("abc", {"prune.rate": 0.2}, None)] == [
        ("abc", {"prune.rate": 0.2})]
    assert [tune_trial_of(v.member_id) for v in views] == ["abc", "abc"] and tune_trial_of("abc") == "abc"


class Recorder:
    """An inner searcher that records what it is given."""

    def __init__(self) -> None:
        self.results: list[tuple[str, int]] = []

    def suggest(self, trial_id: str) -> dict[str, Any]:
        return {"prune.rate": 0.2}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.results.append((trial_id, result["training_iteration"]))


def test_the_pack_searcher_passes_each_members_round_on_once() -> None:
    """A pack reports every member's latest result each time one of them finished a round (members train one after
    another on a CPU): Optuna gets each member's round once, not a repeat of an unchanged member's last one."""
    searcher = PackSearcher(Recorder(), pack=2, total=2)
    searcher.suggest("abc")
    for steps in ([1, None], [1, 1], [2, 1], [2, 2]):
        searcher.on_trial_result("abc", {"members": [{"training_iteration": k} if k else {} for k in steps]})
    assert searcher.inner.results == [("abc_0", 1), ("abc_1", 1), ("abc_0", 2), ("abc_1", 2)]


def test_a_pack_checkpoint_lies_in_its_first_members_folder_as_hard_links(tmp_path: Path) -> None:
    """Built in a folder whose lock the trial holds (so the next holder knows one found there is a killed trial's),
    replacing one that a killed run of the same trial left, and as links: no copy of the engine's files."""
    runs = []
    for config_hash in ("0123abcd", "89efcdab"):
        root = tmp_path / "by_config" / config_hash
        (root / "engine").mkdir(parents=True)
        (root / "engine" / "rounds.jsonl").write_text(f"{config_hash}\n")
        runs.append(SimpleNamespace(config_hash=config_hash, root=root, engine_dir=root / "engine"))
    stale = runs[0].root / ".pack-checkpoint-abc"
    (stale / "0123abcd").mkdir(parents=True)
    (stale / "0123abcd" / "state.pt").write_bytes(b"left by a kill")
    folder = pack_checkpoint(runs, "abc")
    assert folder == stale
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "0123abcd/rounds.jsonl", "89efcdab/rounds.jsonl"]
    for run in runs:
        assert (folder / run.config_hash / "rounds.jsonl").samefile(run.engine_dir / "rounds.jsonl")
