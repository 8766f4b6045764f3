"""scripts/gpu_check.sh, run with a stand-in python that records each command (no GPU needed): its checks,
what it skips, its budget, and every command line it gives the entry points is one they accept."""
import os
import re
import shlex

import pytest

from e2e_harness import run_cmd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU_CHECK = os.path.join(ROOT, "scripts", "gpu_check.sh")


@pytest.mark.slow
def test_gpu_check_bash_syntax():
    assert run_cmd(["bash", "-n", GPU_CHECK]).returncode == 0


def test_gpu_check_keeps_to_eight_minutes():
    """Every check's time comes out of one budget of at most 8 minutes (the command lines themselves are checked
    against the real parsers below, which run the script with a stand-in python)."""
    budget = int(re.search(r"^BUDGET=(\d+)", open(GPU_CHECK).read(), flags=re.M).group(1))
    assert budget <= 480


STUB = """#!/usr/bin/env bash
if [ "$1" = "-" ]; then cat >/dev/null; echo "$FAKE_INFO"; exit 0; fi
printf '%q ' "$@" >>"$CALLS"; echo >>"$CALLS"
case " $* " in *" $FAIL_ON "*) exit 1 ;; esac
exit 0
"""


def _gpu_check(tmp_path, repo_root, info, fail_on="--never"):
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = dict(os.environ, PYTHON=str(stub), FAKE_INFO=info, CALLS=str(calls), FAIL_ON=fail_on)
    # A session of its own, without a terminal: `timeout` runs each check in a background process group.
    out = run_cmd(["bash", os.path.join(repo_root, "scripts", "gpu_check.sh"), str(tmp_path / "out")], env=env,
                  timeout=300, start_new_session=True)
    table = out.stdout.split("== gpu_check")[1].splitlines()[2:]
    return out.returncode, {line.split()[0]: line for line in table if line.strip()}, \
        [shlex.split(line) for line in calls.read_text().splitlines()]


def _entry_parsers(repo_root):
    import importlib.util

    from utils.args import stage1_parser, stage2_parser, parse
    spec = importlib.util.spec_from_file_location("mmm_test_entry_gpu_check", os.path.join(repo_root, "test.py"))
    test_entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test_entry)
    return {"baseline_sysu.py": lambda a: parse(stage1_parser("sysu"), a, dataset="sysu"),
            "main.py": lambda a: parse(stage2_parser(), a), "test.py": lambda a: parse(test_entry.build_parser(), a)}


@pytest.mark.slow
def test_gpu_check_on_one_gpu_skips_the_multi_gpu_checks(tmp_path, repo_root):
    rc, rows, calls = _gpu_check(tmp_path, repo_root, "1 8.0 1 0 Fake_GPU 2.14.1")
    assert rc == 0 and rows["gpu"].split()[1:4] == ["1", "x", "Fake_GPU,"]
    for name in ("s1_dp", "s1_ddp", "s2_ddp"):
        assert "skipped (1 GPU)" in rows[name]
    assert "skipped (faiss-gpu not installed)" in rows["s1_faiss"]
    assert all(" ok " in rows[n] for n in ("gpu_tests", "s1_cudaN", "s2_cudaN", "test_cudaN", "s1_fp16", "s2_fp16",
                                           "s1_bf16", "s2_bf16", "speed"))
    parsers = _entry_parsers(repo_root)
    entry = [(next(a for a in c if a in parsers), c) for c in calls if any(a in parsers for a in c)]
    assert len(entry) == 7
    for name, call in entry:  # every command line is one the entry points accept
        argv = call[call.index(name) + 1:]
        parsers[name](argv)
        if name != "test.py":
            assert argv[argv.index("--device") + 1] in ("cuda", "cuda:0")
    assert {c[c.index("--amp") + 1] for _, c in entry if "--amp" in c} == {"fp16", "bf16"}


@pytest.mark.slow
def test_gpu_check_on_three_gpus_runs_data_parallel_torchrun_and_faiss(tmp_path, repo_root):
    rc, rows, calls = _gpu_check(tmp_path, repo_root, "3 7.5 0 1 Old_GPU 2.14.1", fail_on="--sync-bn")
    assert rc == 1  # a failed check fails the script
    assert "skipped (no bfloat16 on compute capability 7.5)" in rows["s1_bf16"]
    assert " ok " in rows["s1_dp"] and " ok " in rows["s1_faiss"] and "FAIL (exit 1)" in rows["s1_ddp"]
    torchrun = [c for c in calls if "torch.distributed.run" in c]
    assert len(torchrun) == 2 and all("--nproc_per_node" in c and "--sync-bn" in c for c in torchrun)
    assert any(c[c.index("--device") + 1] == "cuda:2" for c in calls if "--device" in c)  # the last GPU
    assert any("--knn" in c and c[c.index("--knn") + 1] == "faiss" for c in calls)


@pytest.mark.slow
def test_gpu_check_refuses_a_folder_it_did_not_make(tmp_path, repo_root):
    """It replaces OUT_DIR/logs on every run, so it never works in a non-empty folder without its marker
    (nothing runs: the stand-in python would record any call)."""
    other = tmp_path / "someone"
    (other / "logs").mkdir(parents=True)
    (other / "logs" / "keep.txt").write_text("not the script's")
    calls = tmp_path / "calls.txt"
    env = dict(os.environ, PYTHON=str(tmp_path / "python"), CALLS=str(calls))
    out = run_cmd(["bash", os.path.join(repo_root, "scripts", "gpu_check.sh"), str(other)], env=env, timeout=60)
    assert out.returncode == 2 and out.stderr.startswith(f"error: {other} exists and was not made by")
    assert (other / "logs" / "keep.txt").read_text() == "not the script's" and not calls.exists()
