import pytest

from boomerang_lab.study.cli import main


def test_sizes_prints_the_family_table(capsys):
    main(["sizes", "--teacher", "smollm2-tiny-random"])
    out = capsys.readouterr().out
    assert "LayerPlan(kept=[0, 2, 4, 6, 7]" in out
    assert len([l for l in out.splitlines() if l.strip().split(" ")[0].isdigit()]) == 4


def test_cli_errors_are_one_clear_line():
    with pytest.raises(SystemExit, match="boomerang sizes: Unknown order 'middle'"):
        main(["sizes", "--teacher", "smollm2-tiny-random", "--order", "middle"])
