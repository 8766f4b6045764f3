"""Every flag of every entry point does something: walk the parsers of baseline_sysu.py / baseline_regdb.py,
main.py, test.py and every scripts/*.py, and require each option's value to be read by the code (or the flag
to be refused when given). The check itself must catch a flag that nothing reads."""
import argparse
import glob
import importlib.util
import os
import re

import pytest

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
    name); help actions and flags that are refused when given (utils.args._Refused) are exempt."""
    from utils.args import _Refused

    missing = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction, _Refused)):
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
    from utils.args import baseline_parser, mmm_parser

    test_entry = _load(os.path.join(ROOT, "test.py"), "flags_test_entry")
    return {"baseline_sysu.py": baseline_parser("sysu"), "baseline_regdb.py": baseline_parser("regdb"),
            "baseline_llcm.py": baseline_parser("llcm"), "main.py": mmm_parser(), "test.py": test_entry.build_parser()}


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
