"""The shape of the code: one list of datasets wired through every entry point, script and parser, no
dataset-name branches outside data/, and the LLCM training script's command lines accepted by the parsers."""
import re
import shlex
import sys
from pathlib import Path

import pytest

from data import datasets
from data.specs import SPECS
from utils.evaluation.metrics import eval_protocol

from test_llcm import L_DIST, L_G_CAMS, L_G_PIDS, L_Q_CAMS, L_Q_PIDS

ROOT = Path(__file__).resolve().parents[1]


def test_every_dataset_is_wired_everywhere():
    sys.path.insert(0, str(ROOT))
    import test as testpy
    from scripts.make_synthetic import GENERATORS
    from utils.args import stage1_parser, parse

    assert tuple(datasets.READERS) == tuple(SPECS) == datasets.DATASETS
    assert set(GENERATORS) == set(SPECS)
    for name in SPECS:
        assert (ROOT / f"baseline_{name}.py").is_file()
    choices = next(a for a in testpy.build_parser()._actions if a.dest == "dataset").choices
    assert sorted(choices) == sorted(SPECS)
    assert parse(stage1_parser("llcm"), ["--data-dir", "D"], dataset="llcm").k1 == 25
    assert parse(stage1_parser("sysu"), ["--data-dir", "D"], dataset="sysu").k1 == 30
    assert parse(stage1_parser("regdb"), ["--data-dir", "D", "--trial", "1"], dataset="regdb").k1 == 30
    assert parse(stage1_parser("llcm"), ["--data-dir", "D", "--k1", "12"], dataset="llcm").k1 == 12
    from utils.evaluation.visualize import REMOVAL_TEXT
    for spec in SPECS.values():           # every removal rule has a metric and a legend text
        assert spec.removal in REMOVAL_TEXT
        eval_protocol(spec.removal, L_DIST, L_Q_PIDS, L_G_PIDS, L_Q_CAMS, L_G_CAMS)
    with pytest.raises(ValueError, match="removal"):
        eval_protocol("cam_only", L_DIST, L_Q_PIDS, L_G_PIDS, L_Q_CAMS, L_G_CAMS)


def test_no_dataset_name_branches_outside_data():
    pattern = re.compile(r"""(dataset\s*[!=]=|[!=]=\s*["'](sysu|regdb|llcm)["']|["'](sysu|regdb|llcm)["']\s*[!=]=)""")
    hits = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("data", "tests") or any(p.startswith(".") for p in rel.parts):
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if pattern.search(line.split("#")[0]):
                hits.append(f"{rel}:{number}: {line.strip()}")
    assert hits == []


def test_train_llcm_sh_lines_parse():
    sys.path.insert(0, str(ROOT))
    import test as testpy
    from utils.args import stage1_parser, stage2_parser, parse

    parsers = {"baseline_llcm.py": lambda a: parse(stage1_parser("llcm"), a, dataset="llcm"),
               "main.py": lambda a: parse(stage2_parser(), a), "test.py": lambda a: parse(testpy.build_parser(), a)}
    seen = []
    for line in (ROOT / "scripts" / "train_llcm.sh").read_text().splitlines():
        m = re.match(r"\s*python\s+(\S+\.py)\s+(.*)$", line)
        if m:
            argv = shlex.split(m.group(2).replace('"$@"', "").replace('"$DATA"', "D"))
            args = parsers[m.group(1)](argv)
            assert getattr(args, "dataset", "llcm") == "llcm"
            seen.append(m.group(1))
    assert seen == ["baseline_llcm.py", "main.py", "test.py"]
