"""scripts/bench_learning.py and utils/bench/learning_metrics.py: the matching accuracy and the chance level on
known answers, the refusal of a folder that is not SYSU-MM01, and one quick end-to-end run (slow)."""
import importlib.util
import json
import os

import numpy as np
import pytest

from e2e_harness import assert_ok, run_cmd, run_main
from e2e_jobs import needs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "bench_learning.py")


@pytest.fixture(scope="module")
def bench():
    """scripts/bench_learning.py imported as a module."""
    spec = importlib.util.spec_from_file_location("bench_learning", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_matching_accuracy_known_answer():
    from utils.bench.learning_metrics import majority_ids, matching_accuracy

    # visible clusters 0, 1, 2 hold mostly ids 5, 7, 9; the outlier (-1, id 5) does not count
    labels_rgb = np.array([0, 0, 0, 1, 1, 2, 2, -1])
    gt_rgb = np.array([5, 5, 6, 7, 7, 9, 9, 5])
    # infrared clusters 0, 1, 2 hold mostly ids 5, 7, 8
    labels_ir = np.array([0, 0, 1, 1, 1, 2, 2, -1])
    gt_ir = np.array([5, 5, 7, 7, 3, 8, 8, 9])
    assert majority_ids(labels_rgb, gt_rgb) == {0: 5, 1: 7, 2: 9}
    # 0 -> 0 (5 = 5) right, 1 -> 1 (7 = 7) right, 2 -> 2 (9 != 8) wrong
    acc = matching_accuracy(labels_rgb, gt_rgb, labels_ir, gt_ir, {0: 0, 1: 1, 2: 2})
    assert acc == pytest.approx(2 / 3)
    # a visible cluster without a partner counts as wrong; partners may be shared (greedy)
    assert matching_accuracy(labels_rgb, gt_rgb, labels_ir, gt_ir, {0: 0, 1: -1, 2: 2}) == pytest.approx(1 / 3)
    assert matching_accuracy(labels_rgb, gt_rgb, labels_ir, gt_ir, {0: 0, 1: 0, 2: 0}) == pytest.approx(1 / 3)


def test_chance_level_matches_theory():
    """Single-shot gallery of n identities, random distances: Rank-1 = 1/n, Rank-5 = 5/n, mAP = H_n / n."""
    from data.datasets import TestSplit
    from data.sample import Sample
    from utils.bench.learning_metrics import METRICS, chance_level

    n = 10
    query = [Sample(f"q{p}_{c}.jpg", p, c, "ir") for p in range(n) for c in (3, 6)]
    splits = [TestSplit(f"trial{t}", query, [Sample(f"g{t}_{p}.jpg", p, 1 + 3 * (p % 2), "rgb") for p in range(n)])
              for t in range(3)]
    chance = chance_level(splits, draws=100, seed=0)
    assert chance["draws"] == 100 and set(chance["std"]) == set(METRICS)
    assert chance["mean"]["r1"] == pytest.approx(100 / n, abs=1.5)
    assert chance["mean"]["r5"] == pytest.approx(100 * 5 / n, abs=3)
    assert chance["mean"]["mAP"] == pytest.approx(100 * sum(1 / k for k in range(1, n + 1)) / n, abs=1.5)


def test_refuses_a_folder_that_is_not_sysu(tmp_path, bench, capsys):
    proc = run_main(bench.main, ["--data-dir", str(tmp_path), "--out", str(tmp_path / "out")], capsys)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "cam1" in lines[0], proc.stderr


def test_refuses_to_overwrite_a_previous_run_without_force(tmp_path, bench, capsys):
    for name in [f"cam{c}" for c in range(1, 7)] + ["exp"]:
        (tmp_path / "data" / name).mkdir(parents=True)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "learning.json").write_text("{}")
    proc = run_main(bench.main, ["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out")], capsys)
    assert proc.returncode == 2 and "--force" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_refuses_an_out_folder_that_cannot_be_created(tmp_path, bench, capsys):
    for name in [f"cam{c}" for c in range(1, 7)] + ["exp"]:
        (tmp_path / "data" / name).mkdir(parents=True)
    proc = run_main(bench.main, ["--data-dir", str(tmp_path / "data"), "--out", "/proc/no/out",
                                 "--threads", "1"], capsys)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: --out /proc/no/out"), proc.stderr


@pytest.mark.slow  # the stage is a process
def test_failing_stage_names_itself_and_its_log(bench, tmp_path):
    from data.sample import DataError

    log = tmp_path / "stage2.log"
    with pytest.raises(DataError, match=r"stage2 .*exit status 3: error: boom .*stage2\.log"):
        bench.run_stage("stage2", ["-c", "import sys; print('step'); print('error: boom'); sys.exit(3)"],
                        dict(os.environ), str(log))
    assert log.read_text() == "step\nerror: boom\n"


@pytest.mark.slow
@needs("bench_quick")
def test_quick_run_end_to_end_joint_step_trains(e2e, bench):
    """The defaults (two-stream MobileNetV2, the package's ImageNet weights) -> bench --quick: test.py on
    the untrained network, both stages and test.py on their checkpoints run through the entry points; the joint
    phase forms cross-modality clusters and really trains, stage 2 runs with the default greedy matching, and
    every result says which weights it started from.

    Known answer for the joint phase: the infrared cameras here show copies of the same person's visible
    images, so the joint clustering must link people across the modalities even after 4 steps (with real
    infrared images, ImageNet features need a few hundred steps before it does: README "What to expect")."""
    from model.weights import PACKAGE_SHA256

    make_data, proc, out = e2e.get("bench_quick")  # the runs: tests/e2e_jobs.py _bench_quick
    assert_ok(make_data)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.load(open(out / "learning.json"))
    assert set(bench.JSON_KEYS) <= set(report)
    epochs = report["stage1_epochs"]
    assert epochs and all({"phase", "epoch", *bench.EPOCH_KEYS} <= set(e) for e in epochs)
    assert {e["phase"] for e in epochs} == {"intra", "joint"}
    assert all(isinstance(e["joint_trained"], bool) for e in epochs if e["phase"] == "joint")
    joint = [e for e in epochs if e["phase"] == "joint"]
    assert all(e["joint_cross_modal_clusters"] > 0 and e["joint_trained"] for e in joint), joint
    assert report["summary"]["joint_trained_fraction"] == 1.0
    stage2_args = json.load(open(out / "logs" / "sysu" / "mmm" / "args.json"))
    assert stage2_args["matching"] == "greedy" and (out / "logs" / "sysu" / "mmm" / "best.pth").exists()
    for rule in ("greedy", "hungarian"):
        assert 0.0 <= report["mmlm"][rule]["accuracy"] <= 1.0
    assert list(report["test"]) == ["chance", "init", "stage1", "stage2"]
    for group in report["test"]:
        for metric in bench.METRICS:
            assert 0.0 <= report["test"][group]["mean"][metric] <= 100.0
    # ImageNet features before any training are far above chance (the row a reader compares stage 1 with)
    assert report["test"]["init"]["mean"]["mAP"] > 1.5 * report["test"]["chance"]["mean"]["mAP"]
    assert {"joint_trained_epochs", "joint_epochs", "stage1_beats_init", "stage2_beats_stage1",
            "init_r1_x_chance", "stage1_r1_x_chance"} <= set(report["summary"])
    assert report["settings"]["weights"]["sha256"] == PACKAGE_SHA256
    for name in ("init", "stage1", "stage2"):
        assert json.load(open(out / "test" / f"{name}.json"))["pretrained"]["sha256"] == PACKAGE_SHA256
    assert PACKAGE_SHA256 in (out / "logs" / "sysu" / "baseline" / "log.txt").read_text()
    with open(out / "learning.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "MMLM" in proc.stdout and "chance" in proc.stdout


@pytest.mark.parametrize("quick", [False, True])
def test_stage_command_lines_parse(bench, quick, tmp_path):
    """The entry-point calls the benchmark (and so scripts/demo.sh) makes are accepted by the real parsers,
    with the documented settings: a renamed flag fails here, not in a user's run."""
    from utils.args import stage1_parser, stage2_parser, parse

    spec = importlib.util.spec_from_file_location("mmm_test_entry", os.path.join(ROOT, "test.py"))
    test_entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test_entry)
    parsers = {"baseline_sysu.py": lambda a: parse(stage1_parser("sysu"), a, dataset="sysu"),
               "main.py": lambda a: parse(stage2_parser(), a), "test.py": lambda a: parse(test_entry.build_parser(), a)}
    args = bench.build_parser().parse_args(["--data-dir", "D"] + ["--quick"] * quick)
    paths = {"data": "D", "out": str(tmp_path), "init": str(tmp_path / "init.pth"), "stage1": str(tmp_path / "s1"),
             "stage2": str(tmp_path / "s2")}
    cmds = bench.stage_commands(args, paths, bench.stage_settings(args))
    assert [name for name, _ in cmds] == ["test_init", "stage1", "stage2", "test_stage1", "test_stage2"]
    for _, argv in cmds:
        parsed = parsers[argv[0]](argv[1:])
        assert parsed.data_dir == "D" and parsed.img_h == 128 and parsed.img_w == 64 and parsed.arch == "mobilenet_v2"
    assert cmds[0][1][cmds[0][1].index("--resume-net1") + 1] == paths["init"]
    stage1, stage2 = (parsers[argv[0]](argv[1:]) for _, argv in cmds[1:3])
    assert stage1.pretrained == "imagenet-offline" and stage2.matching == "greedy"  # the released matching rule
    assert (stage1.epochs, stage1.iters, stage1.eps) == ((1, 4, 0.5) if quick else (4, 60, 0.5))
    assert stage1.channels_last and stage2.channels_last and stage2.epochs == (1 if quick else 3)


def test_demo_script_calls_parse():
    """Every scripts/*.py call in scripts/demo.sh is accepted by that script's parser."""
    import re
    import shlex

    text = open(os.path.join(ROOT, "scripts", "demo.sh")).read().replace("\\\n", " ")
    calls = re.findall(r'^\s*"\$PY" scripts/(\w+)\.py (.*)$', text, flags=re.M)
    assert {name for name, _ in calls} >= {"make_synthetic", "bench_learning"}
    for name, rest in calls:
        rest = re.sub(r'"\$\{THREAD_FLAG\[@\]\}"', "", rest)
        argv = shlex.split(re.sub(r"\$\{?\w+\}?", "x", rest))
        spec = importlib.util.spec_from_file_location(f"demo_{name}", os.path.join(ROOT, "scripts", f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        try:
            module.build_parser().parse_args(argv)
        except SystemExit as err:
            pytest.fail(f"scripts/demo.sh: {name}.py {' '.join(argv)} is refused by its parser ({err})")


def test_summary_compares_each_row_with_the_one_it_builds_on(bench):
    """Known answer: the joint-step count, stage 1 vs the untrained network, stage 2 vs stage 1, x chance."""
    def row(r1, mAP):
        return {"mean": {"r1": r1, "r5": 0.0, "mAP": mAP, "mINP": 0.0}, "std": {}}
    epochs = [{"phase": "intra", "joint_trained": None}] * 4 + \
        [{"phase": "joint", "joint_trained": t} for t in (False, True, True, True)]
    test = {"chance": row(5.0, 10.0), "init": row(15.0, 20.0), "stage1": row(40.0, 19.0), "stage2": row(45.0, 30.0)}
    s = bench.summarize_run(epochs, test)
    assert (s["joint_trained_epochs"], s["joint_epochs"], s["joint_trained_fraction"]) == (3, 4, 0.75)
    assert s["stage1_beats_init"] is False  # Rank-1 rose but mAP fell: both must rise
    assert s["stage2_beats_stage1"] is True
    assert (s["init_r1_x_chance"], s["stage2_mAP_x_chance"]) == (3.0, 3.0)


@pytest.mark.slow
def test_demo_never_writes_into_a_folder_it_did_not_make(tmp_path):
    """scripts/demo.sh OUT where OUT holds someone's files (no .mmm_demo marker): one line, exit 2, nothing
    written or deleted; an OUT that is a file likewise."""
    out = tmp_path / "mine"
    (out / "data" / "cam1").mkdir(parents=True)
    (out / "bench").mkdir()
    (out / "bench" / "notes.txt").write_text("keep me")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    for target in (out, tmp_path / "afile"):
        if target.name == "afile":
            target.write_text("x")
        proc = run_cmd(["bash", os.path.join(ROOT, "scripts", "demo.sh"), str(target)], timeout=60)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert str(target) in lines[0] and proc.stdout == ""
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert (out / "bench" / "notes.txt").read_text() == "keep me" and not (out / ".mmm_demo").exists()
