"""The entry points' parsers for flag tests: the flags each cannot run without, and the check that a
command line ends in exactly one usage error (tests/test_flags.py, tests/test_runs.py)."""
import pytest

# The flags each entry point cannot run without.
NEEDS = {"main": ["--dataset", "sysu", "--data-dir", "D", "--resume-net1", "x.pth"],
         "test": ["--dataset", "regdb", "--trial", "1", "--data-dir", "D", "--resume-net1", "x.pth"],
         "baseline": ["--data-dir", "D"]}


def parser_of(kind: str):
    """The parser of baseline_sysu.py ("baseline"), main.py ("main") or test.py ("test")."""
    from utils.args import stage1_parser, stage2_parser, test_parser

    return {"baseline": lambda: stage1_parser("sysu"), "main": stage2_parser, "test": test_parser}[kind]()


def refused(kind: str, extra, capsys) -> str:
    """utils.args.parse of NEEDS[kind] + extra must end in one usage error (exit 2); returns its line."""
    from utils.args import parse

    with pytest.raises(SystemExit) as info:
        parse(parser_of(kind), NEEDS[kind] + list(extra), dataset="sysu" if kind == "baseline" else None)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    return lines[0]
