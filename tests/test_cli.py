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


def test_flag_values_are_validated_like_a_files_values():
    """A flag's value goes through the profile's validation (pydantic), as the same value in a YAML file."""
    from boomerang_lab.config import profiles
    from boomerang_lab.study.cli import _field_values, build_parser

    with pytest.raises(SystemExit, match=r"boomerang distill: profile smoke\.distill\.max_steps must be int, got 1\.5"):
        main(["distill", "--profile", "smoke", "--max-steps", "1.5"])
    with pytest.raises(SystemExit, match=r"distill\.loss: Loss weights must be >= 0"):
        main(["distill", "--profile", "smoke", "--kl-weight", "-1"])
    args = build_parser().parse_args(["distill", "--lr", "1e-3", "--teacher-dtype", "null", "--scheduler", "linear"])
    config = profiles.get("quick", **_field_values(args)).distill
    assert (config.lr, config.teacher_dtype, config.scheduler) == (1e-3, None, "linear")


def test_distill_runs_the_pipelines_stages(monkeypatch, tmp_path):
    """`boomerang distill` calls the stage notebook 01 calls (the family's student) and one function for a student
    distilled at a size of the family, with the profile and every flag applied."""
    from boomerang_lab.evaluate import direct
    from boomerang_lab.study import stages

    calls = []
    record = lambda *a, **k: calls.append((a, k)) or {"teacher-initialised": a[4]}
    monkeypatch.setattr(stages, "distill_students", record)
    main(["distill", "--profile", "smoke", "--max-steps", "3", "--no-kl", "--keep-first", "2", "--out", str(tmp_path)])
    (profile, _, _, plan, out), kwargs = calls.pop()
    assert profile.distill.max_steps == 3 and profile.distill.loss.kl_weight == 0 and out == str(tmp_path)
    assert plan.kept[:2] == (0, 1) and kwargs["data"]["source"] is None  # --keep-first 2; the shipped corpus

    (tmp_path / "text.txt").write_text("a few words of training text. " * 200)
    monkeypatch.setattr(direct, "direct_student", lambda *a, **k: calls.append((a, k)) or tmp_path)
    main(["distill", "--profile", "smoke", "--size", "1", "--seed", "4", "--data", str(tmp_path / "text.txt")])
    (_, _, plan, k, order, profile, out), kwargs = calls.pop()
    assert k == 1 and order.name == "last" and profile.distill.seed == 4 and out == "runs/smoke/direct_k1_last"
    assert len(kwargs["data"]) > 0 and kwargs["family"] is None
