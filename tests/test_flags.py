"""The flags of the entry points. Every flag does something: walk the parsers of baseline_sysu.py /
baseline_regdb.py, main.py, test.py and every scripts/*.py, and require each option's value to be read by the
code (or the flag to be refused when given); the check itself must catch a flag that nothing reads. Bad values
are refused when parsed (issues 12 and 19): numbers out of range, prefixes of flag names, contradicting
flags, one usage error each, exit status 2."""
import argparse
import glob
import importlib.util
import os
import re
import sys

import pytest

from flag_helpers import NEEDS
from flag_helpers import parser_of as _parser
from flag_helpers import refused as _refused
from e2e_harness import entry_main, run_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("clustering", "data", "memory", "model", "utils")
ENTRY_FILES = ("baseline_sysu.py", "baseline_regdb.py", "baseline_llcm.py", "main.py", "test.py")
DEFINITION = re.compile(r"add_argument\(|_alias\(")


def _read(path: str) -> str:
    """Source of ``path`` without the lines that define flags (a flag's own definition does not count)."""
    with open(path, encoding="utf-8") as f:
        return "".join(line for line in f if not DEFINITION.search(line))


def package_sources() -> str:
    files = [os.path.join(ROOT, f) for f in ENTRY_FILES]
    for pkg in PACKAGES:
        files += sorted(glob.glob(os.path.join(ROOT, pkg, "**", "*.py"), recursive=True))
    return "".join(_read(f) for f in files)


def unread_flags(parser: argparse.ArgumentParser, source: str):
    """Option dests that ``source`` never reads (``args.<dest>``, ``getattr(args, "<dest>"`` or the quoted
    name); help actions and flags that are refused when given (utils.args.Refused) are exempt."""
    from utils.args import Refused

    missing = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction, Refused)):
            continue
        dest = re.escape(action.dest)
        pattern = r"\bargs\.%s\b|getattr\(args, [\"']%s[\"']|[\"']%s[\"']" % (dest, dest, dest)
        if not re.search(pattern, source):
            missing.append(action.dest)
    return missing


def _load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def entry_parsers():
    from utils.args import stage1_parser, stage2_parser

    test_entry = _load(os.path.join(ROOT, "test.py"), "flags_test_entry")
    return {"baseline_sysu.py": stage1_parser("sysu"), "baseline_regdb.py": stage1_parser("regdb"),
            "baseline_llcm.py": stage1_parser("llcm"), "main.py": stage2_parser(), "test.py": test_entry.build_parser()}


SCRIPTS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "scripts", "*.py")))


@pytest.mark.parametrize("entry", sorted(ENTRY_FILES))
def test_every_entry_point_flag_is_read(entry):
    assert unread_flags(entry_parsers()[entry], package_sources()) == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_flag_is_read(script):
    path = os.path.join(ROOT, "scripts", f"{script}.py")
    module = _load(path, f"flags_{script}")
    if not hasattr(module, "build_parser"):
        pytest.skip(f"scripts/{script}.py has no build_parser")
    assert unread_flags(module.build_parser(), _read(path) + package_sources()) == []


def test_the_check_catches_an_unread_flag():
    parser = entry_parsers()["main.py"]
    parser.add_argument("--zz-never-read", type=int, default=3, help="a flag nothing reads")
    parser.add_argument("--zz-also-unread", action="store_true")
    assert unread_flags(parser, package_sources()) == ["zz_never_read", "zz_also_unread"]
    # ...and a read of the value is what makes a flag pass.
    assert unread_flags(parser, package_sources() + "x = args.zz_never_read\n") == ["zz_also_unread"]


def test_definition_lines_do_not_count(tmp_path):
    src = tmp_path / "m.py"
    src.write_text('p.add_argument("--zz-flag", dest="zz_flag")\n')
    parser = argparse.ArgumentParser()
    parser.add_argument("--zz-flag", dest="zz_flag")
    assert unread_flags(parser, _read(str(src))) == ["zz_flag"]


@pytest.mark.parametrize("kind", ["main", "test"])
def test_released_resume_net_is_refused_not_abbreviated(kind, capsys):
    argv = [a if a != "--resume-net1" else "--resume-net" for a in NEEDS[kind]]
    with pytest.raises(SystemExit) as info:
        _parser(kind).parse_args(argv)
    assert info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("kind, abbrev, value", [("baseline", "--num-inst", "4"), ("main", "--num-mem", "4"),
                                                 ("test", "--direc", "both")])
def test_no_prefix_matching_in_any_parser(kind, abbrev, value, capsys):
    line = _refused(kind, [abbrev, value], capsys)
    assert abbrev in line


def test_resume_net_through_main_py(tmp_path, capsys):
    proc = run_main(entry_main("main.py"), ["--dataset", "sysu", "--data-dir", str(tmp_path),
                    "--resume-net", "x.pth"], capsys)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "--resume-net1" in proc.stderr


BAD = [("baseline", "--eps", "0"), ("baseline", "--eps", "-0.5"), ("baseline", "--eps", "nan"),
       ("baseline", "--k1", "0"), ("baseline", "--k2", "-1"), ("baseline", "--k1-joint", "0"),
       ("baseline", "--k2-joint", "0"), ("baseline", "--iters", "0"), ("baseline", "--epochs", "0"),
       ("baseline", "--batch-size", "0"), ("baseline", "-b", "-4"), ("baseline", "--num-instances", "0"),
       ("baseline", "--test-batch", "0"), ("baseline", "--workers", "-1"), ("baseline", "--img-h", "0"),
       ("baseline", "--img-w", "-16"), ("baseline", "--height", "0"), ("baseline", "--eps", "abc"),
       ("main", "--epochs", "0"), ("main", "--batch-ids", "0"), ("main", "--num-pos", "0"),
       ("main", "--img-h", "0"), ("main", "--workers", "-2"), ("main", "--print-freq", "0"),
       ("test", "--img-w", "0"), ("test", "--test-batch", "-1"), ("test", "--workers", "-1")]


@pytest.mark.parametrize("kind, flag, value", BAD)
def test_bad_numbers_refused_at_parse_time(kind, flag, value, capsys):
    line = _refused(kind, [flag, value], capsys)
    assert flag in line and value in line


def test_eps_zero_through_baseline_script(tmp_path, capsys):
    """No model is built: the usage error comes from argparse, one line, exit 2."""
    proc = run_main(entry_main("baseline_sysu.py"), ["--data-dir", str(tmp_path), "--eps", "0"], capsys)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("argument --eps: must be a number in (0, 1], got 0")


def test_valid_edge_values_still_parse():
    from utils.args import parse

    args = parse(_parser("baseline"), NEEDS["baseline"] + ["--workers", "0", "--eps", "0.01", "--k1", "1"],
                 dataset="sysu")
    assert args.workers == 0 and args.eps == 0.01 and args.k1 == 1


STAGE2_SOURCES = ("main.py", "utils/cli.py", "utils/train/stage2.py", "utils/train/stage2_steps.py",
                  "utils/train/loop.py", "utils/train/epoch_end.py", "utils/train/network.py", "utils/run.py",
                  "utils/args.py", "utils/arg_checks.py", "utils/distributed.py", "utils/evaluation/protocols.py")


def test_every_main_flag_is_used_or_refused():
    """Walk main.py's parser: each flag's value goes into the typed settings (or is checked, or refused),
    and each field of the stage-2 settings is read by the code that runs stage 2."""
    import argparse
    import dataclasses

    import typed_settings
    from utils.args import Refused

    src = "".join(open(os.path.join(ROOT, f)).read() for f in STAGE2_SOURCES + ("utils/settings.py",))
    unused = [a.dest for a in _parser("main")._actions
              if not isinstance(a, (argparse._HelpAction, Refused))
              and not re.search(r"args\.%s\b|getattr\(args, \"%s\"" % (a.dest, a.dest), src)]
    assert unused == []
    code = "".join(open(os.path.join(ROOT, f)).read() for f in STAGE2_SOURCES)
    settings = typed_settings.stage2()
    fields = [(part.name, f.name) for part in dataclasses.fields(settings)
              if dataclasses.is_dataclass(getattr(settings, part.name))
              for f in dataclasses.fields(getattr(settings, part.name))]
    fields += [("", f.name) for f in dataclasses.fields(settings) if not dataclasses.is_dataclass(getattr(settings, f.name))]
    assert [f for f in fields if not re.search(r"\.%s\b" % f[1], code)] == []


def test_eval_flags_reach_per_epoch_evaluation():
    import inspect

    from utils.args import parse
    from utils.settings import stage2_settings
    from utils.train import stage2 as mmm
    from utils.train import epoch_end

    args = parse(_parser("main"), NEEDS["main"] + ["--flip", "--amp", "--shot", "10", "--eval-trials", "3",
                                                   "--mode", "indoor", "--img-h", "32", "--img-w", "16"])
    settings = stage2_settings(args)
    ev = settings.eval
    assert (ev.flip, ev.shot, ev.gallery_trials, ev.modes, settings.run.amp) == (True, 10, 3, ("indoor",), True)
    assert (ev.img_h, ev.img_w, ev.directions) == (32, 16, ("visible2thermal",))
    assert "evaluate_run(state.model, settings.eval, ctx)" in inspect.getsource(mmm.run_stage2)
    assert "amp=ctx.amp" in inspect.getsource(epoch_end.evaluate_run)  # --amp resolved once, for the run
    assert "settings.schedule.print_freq" in inspect.getsource(mmm.train_pass)


def test_gallery_trials_refused_in_main(capsys):
    line = _refused("main", ["--gallery-trials", "10"], capsys)
    assert "--gallery-trials" in line and "--eval-trials" in line


@pytest.mark.parametrize("kind, flag, value", [
    ("baseline", "--seed", "-1"), ("baseline", "--momentum", "2"), ("main", "--batch-ids", "1"),
    ("test", "--visualize", "-1"), ("baseline", "--lr", "1e6"), ("main", "--lr", "nan"),
    ("baseline", "--img-h", "100000"), ("main", "--img-w", "4"), ("baseline", "--eps", "1.5"),
    ("baseline", "--temp", "0"), ("baseline", "--weight-decay", "-1"), ("main", "--margin", "-0.1"),
    ("main", "--intra-weight", "inf"), ("main", "--inter-weight", "-1"), ("test", "--rerank-lambda", "nan"),
    ("main", "--seed", str(2 ** 32))])
def test_numbers_out_of_range_refused_when_parsed(kind, flag, value, capsys):
    line = _refused(kind, [flag, value], capsys)
    assert flag in line and value in line


def test_every_numeric_flag_has_a_checked_type():
    """No number is parsed by plain int/float: each numeric flag states its range in its type."""
    loose = [(kind, a.option_strings[0]) for kind in NEEDS for a in _parser(kind)._actions
             if a.type in (int, float) and not a.choices]
    assert loose == []


def test_tvsearch_contradicting_direction_refused(capsys):
    line = _refused("test", ["--tvsearch", "--direction", "visible2thermal"], capsys)
    assert "--tvsearch" in line and "--direction visible2thermal" in line
    from utils.args import parse

    args = parse(_parser("test"), NEEDS["test"] + ["--tvsearch", "--direction", "thermal2visible"])
    assert args.tvsearch


def test_knn_faiss_checked_at_start_with_the_import_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "faiss", None)  # "import faiss" raises ImportError
    line = _refused("baseline", ["--knn", "faiss"], capsys)
    assert "--knn faiss" in line and "import of faiss halted" in line and "--knn torch" in line  # the real error


def test_offline_weights_for_a_resnet_refused_when_parsed(capsys):
    """The package ships a MobileNetV2 only: --pretrained imagenet-offline with a ResNet is a usage error."""
    from utils.args import parse

    for stage in ("baseline", "main"):
        line = _refused(stage, ["--arch", "resnet18", "--pretrained", "imagenet-offline"], capsys)
        assert "imagenet-offline" in line and "--arch resnet18" in line
        args = parse(_parser(stage), NEEDS[stage] + ["--arch", "mobilenet_v2", "--pretrained", "imagenet-offline"],
                     dataset="sysu" if stage == "baseline" else None)
        assert (args.arch, args.pretrained) == ("mobilenet_v2", "imagenet-offline")


def test_regdb_gallery_trials_refused(tmp_path, capsys):
    from test_data_readers import make_regdb

    root = make_regdb(tmp_path / "RegDB")
    proc = run_main(entry_main("test.py"), ["--dataset", "regdb", "--trial", "1", "--data-dir", root,
                    "--resume-net1", "x.pth", "--gallery-trials", "3"], capsys)
    assert proc.returncode == 2 and "--gallery-trials does not apply to RegDB" in proc.stderr
