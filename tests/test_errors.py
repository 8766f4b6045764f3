"""Bad input and machine faults through the entry points (issue 12): each probe runs an entry point on
tiny generated data and must end with exit status 2, exactly one ``error:`` line that names the culprit,
and no traceback. In-process (``main(argv)`` through ``run_cli``, tests/e2e_harness.py ``run_main``)
unless a real process is the point: DataLoader worker processes, a file-size limit on the process."""
import os
import resource
import shutil
import signal

import numpy as np
import pytest

from e2e_harness import STAGE1 as E2E_STAGE1
from e2e_harness import TINY as E2E_TINY
from e2e_harness import assert_one_error, entry_main, flags, run_main
from e2e_harness import run as run_process

# Every probe trains (stage 1) or builds a run folder: git is asked for the code version.
pytestmark = pytest.mark.slow

TINY = flags(E2E_TINY, pretrained="none")
STAGE1 = flags(E2E_STAGE1, drop=["--report-ari", "--k1", "--eps", "--k1-joint", "--k2-joint"], epochs=1, iters=1,
               batch_size=8, eval_step=0)


def run(script: str, *args, preexec=None, capsys=None):
    """``<script> <args>``: in-process with ``capsys``, else ``python <script>`` in the repository root."""
    if capsys is not None:
        return run_main(entry_main(script), args, capsys)
    return run_process(script, *args, timeout=600, preexec_fn=preexec)


@pytest.fixture(scope="module")
def synth(tiny_sysu):
    """Tiny synthetic SYSU-MM01 layout (8 ids, conftest.py)."""
    return tiny_sysu


@pytest.fixture(scope="module")
def stage1_output(synth, tmp_path_factory):
    """A stage-1 run directory made without training: an untrained resnet18 ``final.pth`` and an
    artifact whose labels put the 8 identities into 2 clusters per modality (too few for 8 ids a batch)."""
    from data.datasets import load_train
    from data.sample import pids_of
    from model import build_model
    from utils.artifacts import save_artifact
    from utils.checkpoint import atomic_torch_save, make_checkpoint

    run_dir = tmp_path_factory.mktemp("s1") / "sysu" / "baseline"
    rgb, ir = load_train("sysu", str(synth))
    rng = np.random.default_rng(0)
    samples = {"rgb": rgb, "ir": ir}
    feats = {m: rng.normal(size=(len(s), 16)).astype(np.float32) for m, s in samples.items()}
    labels = {m: (np.asarray(pids_of(s)) % 2).astype(np.int64) for m, s in samples.items()}
    save_artifact(str(run_dir), str(synth), samples, feats, labels, {"dataset": "sysu", "trial": None})
    model = build_model(arch="resnet18", num_classes=0, pretrained="none")
    args = {"img_h": 32, "img_w": 16, "arch": "resnet18"}
    atomic_torch_save(make_checkpoint(model, stage="baseline", phase="final", dataset="sysu", trial=None,
                                      epoch=1, args=args), str(run_dir / "final.pth"))
    stage2 = run_dir.parent / "mmm" / "last.pth"
    atomic_torch_save(make_checkpoint(model, stage="mmm", phase="train", dataset="sysu", trial=None,
                                      epoch=1, args=args), str(stage2))
    return run_dir


# data ---------------------------------------------------------------------------------------------

def test_corrupt_image_with_worker_processes(synth, tmp_path):
    """A training image that cannot be decoded, read by 2 DataLoader workers: the worker's traceback
    is not shown, the message names the image."""
    from data.datasets import load_train

    data = tmp_path / "sysu"
    shutil.copytree(synth, data)
    rgb, _ = load_train("sysu", str(data))
    with open(rgb[0].path, "wb") as f:
        f.write(b"not a jpeg at all" * 20)
    args = flags(STAGE1, workers=2)  # --workers 2
    proc = run("baseline_sysu.py", "--data-dir", data, "--output-dir", tmp_path / "out", *args)
    assert_one_error(proc, rgb[0].path, "cannot be decoded")


# output folder and disk ---------------------------------------------------------------------------

def _unwritable(tmp_path) -> str:
    """A folder this process cannot write into (root ignores permission bits: use /sys then)."""
    if os.geteuid() == 0:
        return "/sys/mmm_probe_output"
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    return str(folder / "out")


def test_unwritable_output_dir_refused_before_any_work(synth, tmp_path, capsys):
    out = _unwritable(tmp_path)
    proc = run("baseline_sysu.py", "--data-dir", synth, "--output-dir", out, *STAGE1, capsys=capsys)
    assert_one_error(proc, "--output-dir", out)
    assert "extract" not in proc.stdout + proc.stderr  # refused before the first feature extraction


def test_output_dir_under_a_file(synth, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    proc = run("main.py", "--dataset", "sysu", "--data-dir", synth, "--output-dir", blocker / "out",
               "--resume_net1", "x.pth", *TINY, capsys=capsys)
    assert_one_error(proc, "--output-dir", str(blocker))


def _small_file_limit():
    """Files may grow to 2 MiB: the log and metrics fit, a checkpoint does not (as on a full disk)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))


def test_full_disk_at_checkpoint_write(synth, tmp_path):
    """The checkpoint write fails: one line naming it and what to do, no temporary file left."""
    out = tmp_path / "out"
    proc = run("baseline_sysu.py", "--data-dir", synth, "--output-dir", out, *STAGE1, preexec=_small_file_limit)
    line = assert_one_error(proc, "cannot write checkpoint", os.path.join("intra", "last.pth"), "--resume")
    assert "inline_container" not in line
    run_dir = out / "sysu" / "baseline"
    assert not list(run_dir.rglob(".tmp_*")) and not (run_dir / "intra" / "last.pth").exists()


# --resume_net1 and --resume -----------------------------------------------------------------------

@pytest.mark.parametrize("case, fragments", [
    ("missing", ["--resume_net1", "no file at"]),
    ("garbage", ["--resume_net1", "not a readable checkpoint"]),
    ("state_dict", ["--resume_net1", "not a checkpoint of this project"]),
    ("stage2", ["--resume_net1", "stage-2 checkpoint", "baseline/final.pth"]),
])
def test_main_names_a_wrong_stage1_checkpoint(synth, stage1_output, tmp_path, case, fragments, capsys):
    """Reported as a checkpoint problem, never as a missing pseudo_labels.npz."""
    import torch

    path = {"missing": tmp_path / "none.pth", "stage2": stage1_output.parent / "mmm" / "last.pth"}.get(case)
    if case == "garbage":
        path = tmp_path / "garbage.pth"
        path.write_bytes(os.urandom(4096))
    elif case == "state_dict":
        path = tmp_path / "resnet.pth"
        torch.save({"conv1.weight": torch.zeros(1)}, path)
    proc = run("main.py", "--dataset", "sysu", "--data-dir", synth, "--output-dir", tmp_path / "out",
               "--resume_net1", path, *TINY, capsys=capsys)
    line = assert_one_error(proc, *fragments, str(path))
    assert "pseudo_labels" not in line


def test_resume_with_another_arch(synth, stage1_output, tmp_path, capsys):
    """--resume of a resnet18 run with --arch resnet34 says which --arch the run needs."""
    from utils.checkpoint import load_checkpoint, atomic_torch_save

    run_dir = tmp_path / "out" / "sysu" / "baseline"
    ckpt = load_checkpoint(str(stage1_output / "final.pth"))
    atomic_torch_save(dict(ckpt, phase="intra"), str(run_dir / "intra" / "last.pth"))
    args = [a if a != "resnet18" else "resnet34" for a in STAGE1]
    proc = run("baseline_sysu.py", "--data-dir", synth, "--output-dir", tmp_path / "out", "--resume", *args,
               capsys=capsys)
    line = assert_one_error(proc, "last.pth", "resnet18", "--arch resnet18")
    assert "Error(s) in loading" not in line


# stage-2 matching ---------------------------------------------------------------------------------

@pytest.mark.parametrize("matching", ["greedy", "hungarian"])
def test_matching_failure_hint_fits_the_flags(synth, stage1_output, tmp_path, matching, capsys):
    """2 matched clusters for --batch-ids 4: the hint offers --matching hungarian only when not given."""
    proc = run("main.py", "--dataset", "sysu", "--data-dir", synth, "--output-dir", tmp_path / "out",
               "--resume_net1", stage1_output / "final.pth", "--matching", matching, "--batch-ids", "4", *TINY,
               capsys=capsys)
    line = assert_one_error(proc, "--batch-ids 4")
    assert ("--matching hungarian" in line) == (matching == "greedy"), line


# --pretrained -------------------------------------------------------------------------------------

@pytest.mark.parametrize("case, fragments", [("missing", ["--pretrained", "no file at"]),
                                             ("garbage", ["cannot read pretrained weights"])])
def test_bad_pretrained_file(synth, tmp_path, case, fragments, capsys):
    path = tmp_path / "weights.pth"
    if case == "garbage":
        path.write_text("root:x:0:0:root:/root:/bin/bash\n")
    args = [a if a != "none" else str(path) for a in STAGE1]
    proc = run("baseline_sysu.py", "--data-dir", synth, "--output-dir", tmp_path / "out", *args, capsys=capsys)
    assert_one_error(proc, *fragments, str(path))


def test_testpy_unwritable_out_refused_before_evaluating(synth, stage1_output, tmp_path, capsys):
    out = os.path.join(_unwritable(tmp_path), "result.json")
    proc = run("test.py", "--dataset", "sysu", "--data-dir", synth, "--resume-net1", stage1_output / "final.pth",
               "--out", out, "--device", "cpu", "--workers", "0", capsys=capsys)
    assert_one_error(proc, "--out", os.path.dirname(out))
    assert "MEAN" not in proc.stdout  # refused before the evaluation


def test_worker_wrapped_error_keeps_only_the_message():
    from data.sample import DataError
    from utils.cli import error_message

    wrapped = DataError('Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call '
                        'last):\n  File "x.py", line 3, in f\ndata.sample.DataError: image a.jpg cannot be decoded\n')
    assert error_message(wrapped) == "image a.jpg cannot be decoded"
    assert error_message(DataError("plain: message")) == "plain: message"
