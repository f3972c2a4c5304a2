"""``largebatch study-report``: tuned studies of several budgets and storages merged into one table,
read from real Optuna SQLite storages whose trials are written as the tuned sweep writes them."""

import json

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from largebatch.cli import main
from largebatch.study.report import (
    ReportError,
    collect,
    parse_study_name,
    report_markdown,
    storage_label,
    write_report,
)

DIST = {"base_lr": FloatDistribution(1e-3, 10.0, log=True)}
PROTOCOL = {"target_val_top1": 90.0, "val_size": 5000, "evals_per_epoch": 4}


def add_cell(url, name, trials, protocol=PROTOCOL, dist=DIST, **study_attrs):
    """A cell's study as `sweep --tune` leaves it: each trial (state, base LR, steps to target or
    None, best val top-1, test top-1)."""
    accuracy = "-accuracy-" in name  # an equal-epochs study maximizes the final val top-1
    study = optuna.create_study(study_name=name, storage=url, direction="maximize" if accuracy else "minimize")
    if protocol is not None:
        study.set_user_attr("protocol", protocol)
    for key, value in study_attrs.items():
        study.set_user_attr(key, value)
    for state, lr, steps, best_val, test in trials:
        attrs = {"best_val_top1": best_val, "val_top1": best_val, "top1": test, "trial_wall_s": 60.0}
        if steps is not None:
            attrs["steps_to_val_target"] = steps
        value = float(steps) if steps is not None else 1000.0 * (1 + (90 - best_val) / 100)
        value = best_val if accuracy else value
        study.add_trial(
            create_trial(
                state=state,
                params={"base_lr": lr},
                distributions=dist,
                user_attrs=attrs,
                values=[value] if state == TrialState.COMPLETE else None,
            )
        )


def test_budgets_of_one_cell_merge_to_the_fewest_steps_over_every_trial(tmp_path):
    short, long = f"sqlite:///{tmp_path / 'e8.db'}", f"sqlite:///{tmp_path / 'long.db'}"
    C, P = TrialState.COMPLETE, TrialState.PRUNED
    add_cell(
        short,
        "nesterov-b1024-steps-e8",
        [(C, 0.3, 300, 90.1, 88.0), (C, 0.5, 280, 90.2, 88.5), (P, 2.0, None, 40, None)],
    )
    add_cell(long, "nesterov-b1024-steps-e16", [(C, 0.2, 260, 90.3, 88.9), (C, 0.9, None, 70.0, 69.0)])
    # a cell that never reached the target: the closest trial is shown, over both budgets
    add_cell(short, "nesterov-b4096-steps-e8", [(C, 0.1, None, 80.0, 79.0)])
    add_cell(long, "nesterov-b4096-steps-e32", [(C, 0.1, None, 88.8, 87.9), (C, 0.4, None, 30.0, 10.0)])
    add_cell(short, "nesterov-b1024-accuracy-e8", [(C, 0.3, None, 93.0, 92.0)])  # another objective: left out

    report = collect([short, long], "steps")
    rows = {r["global_batch_size"]: r for r in report.rows}
    assert rows[1024]["steps_to_target"] == 260 and rows[1024]["study"] == "nesterov-b1024-steps-e16"
    assert rows[1024]["params"] == {"base_lr": 0.2} and rows[1024]["test_top1"] == 88.9
    assert rows[1024]["budgets_epochs"] == [8, 16]
    assert (rows[1024]["trials"], rows[1024]["pruned"]) == (5, 1)  # counted over both budgets
    assert rows[4096]["steps_to_target"] is None and rows[4096]["best_val_top1"] == 88.8
    assert report.protocol == PROTOCOL

    paths = write_report(report, tmp_path / "out")
    table = paths[1].read_text()
    assert "| nesterov | 1024 | 8/16 | nesterov-b1024-steps-e16 / 0 |" in table
    assert "not reached (best val 88.80%)" in table
    assert json.loads(paths[0].read_text())["rows"][0]["steps_to_target"] == 260
    assert paths[2].name == "steps_to_target.png" and paths[2].stat().st_size > 10_000


def test_the_fit_recovers_the_critical_batch_and_the_bend_is_located(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    s_min, b_noise = 100.0, 4000.0  # McCandlish et al. eq. 2.11: S = S_min (1 + B_noise / B)
    for b in (128, 256, 512, 1024, 2048, 4096):
        steps = round(s_min * (1 + b_noise / b))
        add_cell(url, f"lars-b{b}-steps-e8", [(TrialState.COMPLETE, 1.0, steps, 90.5, 89.0)])
    report = collect([url], "steps")
    fit = report.fits["lars"]
    assert fit["s_min"] == pytest.approx(s_min, rel=0.01) and fit["b_noise"] == pytest.approx(b_noise, rel=0.02)
    # 3225, 1663, 881, 491, 295, 198 steps: per doubling x0.516, 0.530, 0.557, 0.601, 0.671; halving
    # within 20% (<= 0.6) holds from 128 to 1024, and 2048 (x0.601) is the first batch past it
    assert report.scaling["lars"] == {
        "perfect_scaling_region": [128, 256, 512, 1024],
        "bend_after": 2048,
        "batch_sizes_reaching_target": 6,
    }
    assert "over 128-1024 (4 batch sizes); the bend: 2048" in write_report(report, tmp_path / "o")[1].read_text()


def test_further_seeds_give_the_spread_of_the_chosen_trial(tmp_path):
    # seed 3 confirmed a trial that was chosen before trial 0 beat it: it is not the chosen trial's spread
    url = f"sqlite:///{tmp_path / 's.db'}"
    add_cell(
        url,
        "goyal-b256-accuracy-e16",
        [(TrialState.COMPLETE, 0.5, None, 92.0, 91.0), (TrialState.COMPLETE, 0.1, None, 89.0, 93.0)],
        confirm_s1={"top1": 90.0, "val_top1": 91.5, "steps_to_val_target": None, "trial": 0},
        confirm_s2={"top1": 91.6, "val_top1": 91.9, "steps_to_val_target": None, "trial": 0},
        confirm_s3={"top1": 50.0, "val_top1": 51.0, "steps_to_val_target": None, "trial": 1},  # chosen earlier
    )
    (row,) = collect([url], "accuracy").rows
    assert row["trial"] == 0 and row["val_top1"] == 92.0  # chosen on validation, not on test (93.0)
    tests = [91.0, 90.0, 91.6]
    assert row["seeds"] == 3 and row["test_top1_mean"] == pytest.approx(sum(tests) / 3)
    assert (row["test_top1_min"], row["test_top1_max"]) == (min(tests), max(tests))


def test_studies_that_cannot_merge_are_refused_with_one_line(tmp_path, capsys):
    a, b = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    add_cell(a, "lamb-b512-steps-e8", [(TrialState.COMPLETE, 0.01, 400, 90.1, 89.0)])
    add_cell(
        b,
        "lamb-b1024-steps-e8",
        [(TrialState.COMPLETE, 0.01, 300, 90.1, 89.0)],
        protocol={**PROTOCOL, "val_size": 2000},
    )
    with pytest.raises(ReportError, match="val_size 2000"):
        collect([a, b], "steps")
    add_cell(a, "lamb-b512-accuracy-e8", [(TrialState.COMPLETE, 0.01, None, 92.0, 91.0)])
    add_cell(a, "lamb-b512-accuracy-e16", [(TrialState.COMPLETE, 0.01, None, 93.0, 92.0)])
    with pytest.raises(ReportError, match=r"studies at \[8, 16\] epochs"):
        collect([a], "accuracy")
    assert [r["epochs"] for r in collect([a], "accuracy", epochs=16).rows] == [16]

    assert main(["study-report", f"sqlite:///{tmp_path / 'missing.db'}", "--out", str(tmp_path / "o")]) == 2
    assert main(["study-report", a, "--objective", "accuracy", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "missing.db: no such file" in err and "give --epochs" in err and "Traceback" not in err
    assert not (tmp_path / "missing.db").exists()
    assert main(["study-report", a, b, "--methods", "lamb", "--batch-sizes", "512", "--out", str(tmp_path / "o")]) == 0
    assert "| lamb | 512 | 8 |" in capsys.readouterr().out


def test_study_names_parse_as_the_sweep_writes_them():
    assert parse_study_name("linear_no_warmup-b16384-steps-e64") == {
        "method": "linear_no_warmup",
        "batch": 16384,
        "objective": "steps",
        "epochs": 64,
    }
    assert parse_study_name("adam-b512-steps-e8") is None and parse_study_name("my-study") is None


def test_the_steps_table_shows_the_chosen_trials_steps_with_each_further_seed(tmp_path):
    # the fewest steps over many trials is the luckiest of them: the table says what the chosen
    # trial's hyperparameters took again with seed 1 (reached later) and seed 2 (not reached)
    url = f"sqlite:///{tmp_path / 's.db'}"
    add_cell(
        url,
        "nesterov-b256-steps-e8",
        [(TrialState.COMPLETE, 0.5, 540, 90.3, 89.5), (TrialState.COMPLETE, 0.1, 700, 90.1, 89.0)],
        confirm_s1={"top1": 89.4, "val_top1": 90.3, "steps_to_val_target": 702, "trial": 0},
        confirm_s2={"top1": 88.0, "val_top1": 89.9, "steps_to_val_target": None, "trial": 0},
    )
    report = collect([url], "steps")
    (row,) = report.rows
    assert row["steps_to_target"] == 540 and row["seed_steps_to_target"] == [540, 702, None]
    assert "| 540 (further seeds: 702, not reached) |" in report_markdown(report)


def test_trial_minutes_of_merged_machines_are_shown_apart(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    C = TrialState.COMPLETE
    add_cell(url, "nesterov-b512-steps-e8", [(C, 0.3, 400, 90.2, 89.0), (C, 0.5, 380, 90.1, 89.1)])
    study = optuna.load_study(study_name="nesterov-b512-steps-e8", storage=url)
    attrs = {"best_val_top1": 90.3, "val_top1": 90.3, "top1": 89.2, "trial_wall_s": 30.0}
    study.add_trial(  # a trial run on another machine and merged back (merge_trials tags it)
        create_trial(
            state=C,
            params={"base_lr": 0.4},
            distributions=DIST,
            user_attrs={**attrs, "steps_to_val_target": 390, "machine": "H200"},
            values=[390.0],
        )
    )
    row = collect([url], "steps").rows[0]
    assert row["wall_s"] == 120.0 and row["other_machines_wall_s"] == {"H200": 30.0}
    assert row["trials"] == 3
    assert "| 3 (0, 0) | 2.0 + 0.5 H200 |" in report_markdown(collect([url], "steps"))


def test_a_chosen_value_at_the_edge_of_its_search_range_is_flagged(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    C = TrialState.COMPLETE
    # DIST searches base_lr in [1e-3, 10] on a log scale: 5% of the log range is a factor 10**0.2 = 1.58
    add_cell(url, "nesterov-b256-steps-e8", [(C, 8.0, 300, 90.4, 89.0), (C, 0.1, 400, 90.1, 88.0)])  # top edge
    add_cell(url, "nesterov-b512-steps-e8", [(C, 1.4e-3, 200, 90.4, 89.0)])  # bottom edge
    add_cell(url, "nesterov-b1024-steps-e8", [(C, 0.1, 160, 90.2, 88.0), (C, 6.0, 150, 90.4, 89.0)])  # near, inside
    rows = {r["global_batch_size"]: r for r in collect([url], "steps").rows}
    assert rows[256]["params_at_edge"] == ["base_lr"] and rows[512]["params_at_edge"] == ["base_lr"]
    assert rows[1024]["params_at_edge"] == []  # 6.0 is 5.5% of the log range from the top: inside
    table = report_markdown(collect([url], "steps"))
    assert "base_lr 8 (edge)" in table and "base_lr 0.0014 (edge)" in table and "base_lr 6 |" in table
    assert "(edge): the chosen value lies in the outer 5%" in table


def test_the_edge_is_judged_on_every_range_a_cell_was_searched_with(tmp_path):
    """A cell searched again with a wider LR range (``sweep --tune --search-range`` into a second storage):
    a value at the edge of the first range only is inside what was searched; one at the wide range's
    edge is flagged."""
    narrow, wide = f"sqlite:///{tmp_path / 'narrow.db'}", f"sqlite:///{tmp_path / 'wide.db'}"
    C = TrialState.COMPLETE
    narrow_dist = {"base_lr": FloatDistribution(0.01, 3.0, log=True)}
    wide_dist = {"base_lr": FloatDistribution(1e-4, 3.0, log=True)}
    # 8,192: the best trial sits at the bottom of [0.01, 3], the middle of [1e-4, 3]
    add_cell(narrow, "nesterov-b8192-accuracy-e16", [(C, 0.0105, None, 80.0, 79.5)], dist=narrow_dist)
    add_cell(wide, "nesterov-b8192-accuracy-e16", [(C, 0.2, None, 60.0, 59.0)], dist=wide_dist)
    # 16,384: the best trial sits at the bottom of the wide range
    add_cell(narrow, "nesterov-b16384-accuracy-e16", [(C, 0.05, None, 60.0, 59.0)], dist=narrow_dist)
    add_cell(wide, "nesterov-b16384-accuracy-e16", [(C, 1.1e-4, None, 75.0, 74.0)], dist=wide_dist)
    alone = {r["global_batch_size"]: r for r in collect([narrow], "accuracy", epochs=16).rows}
    assert alone[8192]["params_at_edge"] == ["base_lr"]  # judged on the narrow range alone: flagged
    rows = {r["global_batch_size"]: r for r in collect([narrow, wide], "accuracy", epochs=16).rows}
    assert rows[8192]["params"]["base_lr"] == 0.0105 and rows[8192]["params_at_edge"] == []
    assert rows[16384]["params"]["base_lr"] == 0.00011 and rows[16384]["params_at_edge"] == ["base_lr"]
    # the same study name in both storages: the table says which one the chosen trial is in
    assert rows[8192]["storage"] == narrow and rows[16384]["storage"] == wide
    table = report_markdown(collect([narrow, wide], "accuracy", epochs=16))
    assert f"nesterov-b8192-accuracy-e16 / 0 in {tmp_path.name}/narrow.db |" in table
    assert f"nesterov-b16384-accuracy-e16 / 0 in {tmp_path.name}/wide.db |" in table
    assert " in " not in report_markdown(collect([narrow], "accuracy", epochs=16)).split("\n")[4]
    assert storage_label("postgresql://lb:secret@db.example:5432/study") == "postgresql://lb:***@db.example:5432/study"
