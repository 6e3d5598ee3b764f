"""`lth-sweep report` on a small real sweep (tiny MNIST-1D, 4 trials, FIFO, a random_mask control, 2 replicates):
the page and its figures, the series the figures drew, the top-trials table against `status --json`, the rerun
command, the page in headless Chromium, and the W&B report's definition.

Nothing is mocked except the W&B server in the one test that publishes (its two network calls: the default
entity and `Report.save`)."""

from __future__ import annotations

import csv
import html.parser
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import sweep_helpers as h
from PIL import Image
from test_failures import tmpfs

from lth_sweep.errors import RunFailure
from lth_sweep.report import figures as figs
from lth_sweep.report.local import LocalReport, write_report
from lth_sweep.report.wandb_report import PANEL_KINDS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROUNDS = 3
NUM_SAMPLES = 4
EXPECTED_FIGURES = {"lottery_ticket.png", "early_stop.png", "objective_vs_params.png", "importance.png"}


class Reported(NamedTuple):
    sweep: h.Sweep
    out: Path
    command: h.Result
    status: dict[str, Any]
    local: LocalReport  # the same report made in this process, to read the figures' series


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory, data_root: Path, ray_tmp: Path) -> Reported:
    tree = h.sweep_tree(data_root, epochs=3, rounds=ROUNDS, num_samples=NUM_SAMPLES, max_concurrent=2,
                        sampler="random", set={"control": "random_mask", "replicates": 2})
    sweep = h.launch_sweep(tree, tmp_path_factory.mktemp("report"), ray_tmp, name="rep", timeout=400)
    assert sweep.launch.returncode == 0, sweep.launch.explain()
    out = sweep.cwd / "out"
    env = {k: v for k, v in sweep.env.items() if k != "WANDB_API_KEY"}
    command = h.run_cli("report", sweep.dir, "--out", out, "--wandb", cwd=sweep.cwd, env=env, timeout=300)
    assert command.returncode == 0, command.explain()
    status = h.status_json(sweep.dir, sweep.cwd, sweep.env)
    return Reported(sweep, out, command, status, write_report(str(sweep.dir), sweep.cwd / "in_process"))


def series(report: LocalReport, name: str) -> list[figs.Drawn]:
    return next(f for f in report.figures if f.name == name).series


def test_the_report_writes_the_page_its_figures_and_rounds_csv(reported: Reported) -> None:
    assert f"report written to {reported.out / 'index.html'}" in reported.command.stdout
    pngs = {p.name for p in reported.out.glob("*.png")}
    assert pngs == EXPECTED_FIGURES  # no pareto (single objective), no instability (not measured)
    for name in pngs:
        with Image.open(reported.out / name) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200
            image.verify()
    lines = (reported.out / "rounds.csv").read_text().splitlines()
    assert len(lines) == 1 + NUM_SAMPLES * ROUNDS
    rows = list(csv.DictReader(lines))
    assert sum(row["control_test_acc"] != "" for row in rows) == NUM_SAMPLES * (ROUNDS - 1)  # no dense control


def test_the_lottery_ticket_plot_draws_every_trial_its_control_and_its_spread(reported: Reported) -> None:
    drawn = series(reported.local, "lottery_ticket.png")
    best = reported.status["best"][0]
    for metric in ("test_acc_at_early_stop", "val_acc"):
        on_axes = [d for d in drawn if d.axes == metric]
        tickets = {d.trial_id: d for d in on_axes if d.kind == "ticket"}
        controls = {d.trial_id: d for d in on_axes if d.kind == "control"}
        bands = {d.trial_id: d for d in on_axes if d.kind == "band"}
        control_bands = {d.trial_id: d for d in on_axes if d.kind == "control band"}
        assert (set(tickets) == set(controls) == set(bands) == set(control_bands)
                == {t["trial_id"] for t in reported.status["trials"]})
        for trial in reported.status["trials"]:
            records = h.engine_rounds(reported.sweep.dir, trial["config_hash"])
            ticket, control, band = tickets[trial["trial_id"]], controls[trial["trial_id"]], bands[trial["trial_id"]]
            assert ticket.x == pytest.approx([100 * r["density"] for r in records])
            assert ticket.y == pytest.approx([r[metric] for r in records])
            assert ticket.linestyle == "-" and control.linestyle == "--"
            with_control = [r for r in records if f"control_{metric}" in r]
            assert len(with_control) == ROUNDS - 1  # the dense round has no control
            assert control.x == pytest.approx([100 * r["density"] for r in with_control])
            assert control.y == pytest.approx([r[f"control_{metric}"] for r in with_control])
            for r in records:  # the band spans mean ± std of the 2 replicates at every round
                at_x = [y for x, y in zip(band.x, band.y, strict=True) if x == pytest.approx(100 * r["density"])]
                assert min(at_x) == pytest.approx(r[metric] - r[f"{metric}_std"])
                assert max(at_x) == pytest.approx(r[metric] + r[f"{metric}_std"])
            for r in with_control:  # and the control's band, its control's
                at_x = [y for x, y in zip(control_bands[trial["trial_id"]].x, control_bands[trial["trial_id"]].y,
                                          strict=True) if x == pytest.approx(100 * r["density"])]
                assert min(at_x) == pytest.approx(r[f"control_{metric}"] - r[f"control_{metric}_std"])
                assert max(at_x) == pytest.approx(r[f"control_{metric}"] + r[f"control_{metric}_std"])
        (dense,) = [d for d in on_axes if d.kind == "dense"]
        dense_record = h.engine_rounds(reported.sweep.dir, best["config_hash"])[0]
        assert dense.trial_id == best["trial_id"] and dense.y == pytest.approx([dense_record[metric]])


def test_the_early_stop_plot_draws_every_trial(reported: Reported) -> None:
    tickets = [d for d in series(reported.local, "early_stop.png") if d.kind == "ticket"]
    assert len(tickets) == NUM_SAMPLES
    for drawn in tickets:
        trial = next(t for t in reported.status["trials"] if t["trial_id"] == drawn.trial_id)
        records = h.engine_rounds(reported.sweep.dir, trial["config_hash"])
        assert drawn.y == pytest.approx([r["early_stop_iter"] for r in records])


def test_the_objective_is_plotted_against_every_searched_value(reported: Reported) -> None:
    drawn = {d.axes: d for d in series(reported.local, "objective_vs_params.png")}
    assert set(drawn) == set(h.SPACE)
    for key, points in drawn.items():
        expected = sorted((t["params"][key], t["objective"]) for t in reported.status["trials"])
        assert sorted(zip(points.x, points.y, strict=True)) == pytest.approx(expected)


def test_parameter_importances_cover_the_searched_keys(reported: Reported) -> None:
    importances = figs.param_importances(reported.local.data)
    assert set(importances) == set(h.SPACE)
    assert sum(importances.values()) == pytest.approx(1.0)
    (bars,) = series(reported.local, "importance.png")
    assert sorted(bars.x) == pytest.approx(sorted(importances.values()))


class TableReader(html.parser.HTMLParser):
    """The cells of one table (by id) and every image source of a page."""

    def __init__(self, table_id: str) -> None:
        super().__init__()
        self.table_id, self.inside, self.rows, self.images = table_id, False, [], []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "table" and attributes.get("id") == self.table_id:
            self.inside = True
        elif tag == "tr" and self.inside:
            self.rows.append([])
        elif tag in ("td", "th") and self.inside:
            self.rows[-1].append("")
        elif tag == "img":
            self.images.append(attributes["src"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.inside = False

    def handle_data(self, data: str) -> None:
        if self.inside and self.rows and self.rows[-1]:
            self.rows[-1][-1] += data


def read_page(out: Path, table_id: str = "top-trials") -> TableReader:
    reader = TableReader(table_id)
    reader.feed((out / "index.html").read_text())
    return reader


def test_the_page_references_every_figure(reported: Reported) -> None:
    assert sorted(read_page(reported.out).images) == sorted(p.name for p in reported.out.glob("*.png"))


def test_the_top_trials_table_is_status_best(reported: Reported) -> None:
    header, *rows = read_page(reported.out).rows
    best = reported.status["best"]
    assert [row[1] for row in rows] == [b["trial_id"] for b in best]
    keys = header[2:2 + len(h.SPACE)]
    assert set(keys) == set(h.SPACE)
    for row, trial in zip(rows, best, strict=True):
        values = dict(zip(keys, row[2:], strict=False))
        assert all(values[k] == f"{trial['params'][k]:.4g}" for k in keys)
        assert row[2 + len(keys)] == f"{trial['objective']:.4g}"
        assert row[-2] == shlex.join(["lth-sweep", "ticket", "export", str(reported.sweep.dir), trial["trial_id"],
                                      "--out", str(reported.out / "tickets" / f"{trial['trial_id']}.pt")])


def test_the_printed_rerun_command_reproduces_the_best_trial(reported: Reported, tmp_path: Path) -> None:
    _, first, *_ = read_page(reported.out).rows
    argv = shlex.split(first[-1])
    assert argv[:2] == ["lth-sweep", "run"]
    proc = subprocess.run([sys.executable, "-m", "lth_sweep.cli", *argv[1:]], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rerun = h.read_jsonl(tmp_path / argv[argv.index("--out") + 1] / "rounds.jsonl")
    original = h.engine_rounds(reported.sweep.dir, reported.status["best"][0]["config_hash"])
    keys = ("round", "density", "val_acc", "test_acc_at_early_stop", "control_val_acc", "val_acc_std")
    assert [[r.get(k) for k in keys] for r in rerun] == [[r.get(k) for k in keys] for r in original]


HARNESS = """<!doctype html><html><body><iframe id="report" src="{src}" style="width:1200px;height:900px"></iframe>
<script>
document.getElementById("report").addEventListener("load", () => {{
  const page = document.getElementById("report").contentDocument;
  const images = Array.from(page.images);
  const broken = images.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.getAttribute("src"));
  console.log("REPORT-CHECK " + JSON.stringify({{images: images.length, broken: broken, title: page.title}}));
}});
</script></body></html>"""


def chromium_console(page: Path, tmp_path: Path) -> list[str]:
    """The console lines headless Chromium logs while it loads `page` inside a harness that checks every image
    decoded (a page that is not there, or an image that does not load, shows in the harness's line)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    harness = tmp_path / "harness.html"
    harness.write_text(HARNESS.format(src=page.resolve().as_uri()))
    proc = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
                           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", harness.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


def test_the_page_renders_in_headless_chromium_without_console_errors(reported: Reported, tmp_path: Path) -> None:
    console = chromium_console(reported.out / "index.html", tmp_path)
    checks = [line for line in console if "REPORT-CHECK" in line]
    assert len(checks) == 1 and len(console) == 1, console  # nothing else on the console: no error, no warning
    result = json.loads(checks[0].split("REPORT-CHECK ", 1)[1].rsplit('", source:', 1)[0])
    assert result == {"images": len(EXPECTED_FIGURES), "broken": [], "title": "Sweep rep: lottery-ticket report"}


def test_the_wandb_definition_has_the_four_panel_kinds_and_the_group_filter(reported: Reported) -> None:
    assert "no W&B credentials" in reported.command.stdout
    spec = json.loads((reported.out / "wandb_report.json").read_text())["spec"]
    (grid,) = [b for b in spec["blocks"] if b["type"] == "panel-grid"]
    panels = grid["metadata"]["panelBankSectionConfig"]["panels"]
    assert {p["viewType"] for p in panels} == set(PANEL_KINDS)
    lines = [p["config"] for p in panels if p["viewType"] == "Run History Line Plot"]
    assert sorted(c["metrics"][0] for c in lines) == ["test_acc_at_early_stop", "val_acc"]
    assert all(c["xAxis"] == "density" for c in lines)
    (parallel,) = [p["config"] for p in panels if p["viewType"] == "Parallel Coordinates Plot"]
    assert [c["accessor"] for c in parallel["columns"]] == [
        "config:prune.value.rate", "config:rewind.value.iteration", "config:train.value.lr", "summary:objective"]
    (importance,) = [p["config"] for p in panels if p["viewType"] == "Parameter Importance"]
    assert importance["targetKey"] == "objective"
    (runset,) = grid["metadata"]["runSets"]
    assert runset["filters"]["filters"] == [{"key": {"section": "run", "name": "group"}, "op": "=", "value": "rep",
                                             "disabled": False}]


def test_with_credentials_the_wandb_report_is_saved_and_its_url_printed(reported: Reported, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The W&B server cannot exist here: its network calls (the credential check, the key's default entity,
    Report.save) are replaced; everything else is wandb's and wandb-workspaces' own code."""
    import wandb.sdk.wandb_login
    import wandb_workspaces.reports.v2 as wr

    from lth_sweep.report import wandb_report

    saved = []

    def save(self, draft: bool = False, clone: bool = False):
        saved.append(self)
        self.id = "Vmlldzo0Mg"
        return self

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(wandb.sdk.wandb_login, "_verify_login", lambda auth, service_api=None: None)
    monkeypatch.setattr(wandb_report, "default_entity", lambda: "lth-team")
    monkeypatch.setattr(wr.Report, "save", save)
    line = wandb_report.publish(reported.local.data, tmp_path)
    assert line.startswith("W&B report: https://"), line
    assert line.endswith("/lth-team/lth-sweep-tests/reports/Lottery-ticket-sweep-rep--Vmlldzo0Mg"), line
    assert saved[0].blocks[-1].runsets[0].entity == "lth-team"
    assert not (tmp_path / "wandb_report.json").exists()


def test_a_report_that_does_not_fit_the_disk_leaves_the_old_one_whole(reported: Reported, tmp_path: Path) -> None:
    """Before: each file replaced its old version as it was written, so a disk that filled up half-way left the new
    figures beside the old page and rounds.csv. Now the report is written into a folder inside DIR first and
    renamed into place once whole; on a real tmpfs with room for the largest figure but not for all of them,
    the old report stays as it was, and nothing of the new one is left."""
    sizes = sorted(len(fig.png) for fig in reported.local.figures)
    assert sum(sizes[:-1]) > 16384, sizes  # else one figure alone would not fill the room left
    with tmpfs(tmp_path / "small", "8m") as small:
        out = small / "report"
        out.mkdir()
        old = {name: f"the report before: {name}".encode() for name in [*EXPECTED_FIGURES, "index.html", "rounds.csv"]}
        for name, data in old.items():
            (out / name).write_bytes(data)
        room = os.statvfs(small).f_bavail * os.statvfs(small).f_frsize
        (small / "filler").write_bytes(b"x" * (room - sizes[-1] - 16384))
        with pytest.raises(RunFailure) as failure:
            write_report(str(reported.sweep.dir), out)
        assert failure.value.path.parent == out and "no space left on device" in str(failure.value), failure.value
        assert {p.name: p.read_bytes() for p in out.iterdir()} == old


def test_a_report_of_no_sweep_is_one_line_and_exit_2(reported: Reported, tmp_path: Path) -> None:
    result = h.run_cli("report", tmp_path / "nothing", cwd=tmp_path, env=reported.sweep.env, timeout=120)
    assert result.returncode == 2 and "sweep.json is missing" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "nothing").exists()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = h.run_cli("report", reported.sweep.dir, "--out", blocker / "report", cwd=tmp_path,
                       env=reported.sweep.env, timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.explain()
    assert "cannot write the report" in result.stderr
