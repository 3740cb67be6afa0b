import json

import pytest

from boomerang_lab import LayerPlan


def paper_mapping(first: int, last: int, every: int, n: int):
    """The paper's get_layer_mappings, transcribed: (aligned hidden states, teacher layers to cut)."""
    aligned = {i: i for i in range(first)}
    idx, align_idxs = first + every - 1, []
    while idx <= n - last:
        align_idxs.append(idx)
        idx += every
    largest = 0
    for i, a in enumerate(align_idxs):
        aligned[i + first] = a
        largest = i + first
    for i in range(n - last + 1, n):
        largest += 1
        aligned[largest] = i
    aligned[-1] = -1
    cut = [a - i for a in align_idxs for i in range(every - 1, 0, -1)]
    return aligned, cut


def reference_alignment(first: int, last: int, every: int, n: int) -> dict[int, int]:
    """The paper's rule, written independently of LayerPlan: student state s is the state entering the s-th kept
    teacher layer, counted by walking the teacher's layers and skipping the ones get_layer_mappings cuts."""
    _, cut = paper_mapping(first, last, every, n)
    aligned, s = {}, 0
    for i in range(n):
        if i not in cut:
            aligned[s] = i
            s += 1
    aligned[-1] = -1
    return aligned


@pytest.mark.parametrize(
    "n, expected",
    [
        (36, [*range(0, 35, 2), 35]),
        (30, [*range(0, 29, 2), 29]),
        (32, [*range(0, 31, 2), 31]),
        (28, [*range(0, 27, 2), 27]),
    ],
)
def test_paper_plans(n, expected):
    plan = LayerPlan.paper(n)
    assert list(plan.kept) == expected
    # Every student layer but the last two stands for a pair of teacher layers; the last two for one each.
    assert [list(b) for b in plan.blocks] == [[i, i + 1] for i in range(0, n - 2, 2)] + [[n - 2], [n - 1]]
    assert plan.multi_layer == list(range(n // 2 - 1)) and plan.pruned == list(range(1, n - 2, 2))


# The paper code's one departure from its own rule: with keep_first=2 on an even-depth teacher, get_layer_mappings
# skips the kept layer n-2 and aligns the student state that enters it with teacher state n-1 (one block late).
PAPER_CODE_SHIFT = {(n, 2, 2, 2): {n // 2: n - 1} for n in (28, 30, 32, 36)}


@pytest.mark.parametrize("n", [28, 30, 32, 36])
@pytest.mark.parametrize("first, last, every", [(1, 2, 2), (2, 2, 2), (1, 1, 3), (3, 2, 2)])
def test_plan_and_alignment_match_paper_code(n, first, last, every):
    plan = LayerPlan.paper(n, keep_first=first, keep_last=last, every=every)
    aligned, cut = paper_mapping(first, last, every, n)
    assert plan.pruned == sorted(cut)
    ours = dict(plan.alignment())
    # Every pair, including the ones the paper's code leaves out (every=3: the layers after the last aligned one).
    assert ours == reference_alignment(first, last, every, n)
    # Where the paper's code aligns a state, it agrees with ours, except the one documented shift.
    differs = {s: t for s, t in aligned.items() if ours[s] != t}
    assert differs == PAPER_CODE_SHIFT.get((n, first, last, every), {})
    assert len(aligned) <= len(ours)


def test_blocks_cover_teacher():
    plan = LayerPlan.paper(30)
    covered = [i for b in plan.blocks for i in b]
    assert covered == list(range(30))
    assert plan.block(0) == range(0, 2) and plan.block(15) == range(29, 30)
    assert plan.multi_layer == list(range(14))


def test_from_kept_distilbert():
    plan = LayerPlan.from_kept([0, 2, 4, 7, 9, 11], 12)
    assert [list(b) for b in plan.blocks] == [[0, 1], [2, 3], [4, 5, 6], [7, 8], [9, 10], [11]]
    assert plan.multi_layer == [0, 1, 2, 3, 4]
    assert plan.alignment() == [(0, 0), (1, 2), (2, 4), (3, 7), (4, 9), (5, 11), (-1, -1)]


def test_json_round_trips(tmp_path):
    plan = LayerPlan.paper(30, keep_first=2)
    plan.save(tmp_path)
    paper = json.loads((tmp_path / "student_config.json").read_text())
    assert paper["copied_teacher_layers"] == list(plan.kept)
    assert sorted(paper["pruned_teacher_layers"] + paper["copied_teacher_layers"]) == list(range(30))
    assert LayerPlan.load(tmp_path) == plan
    assert LayerPlan.load(tmp_path / "student_config.json") == plan
    (tmp_path / "boomerang_plan.json").unlink()
    assert LayerPlan.load(tmp_path) == plan


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kept=(1, 2), num_teacher_layers=4), "layer 0"),
        (dict(kept=(0, 2, 2), num_teacher_layers=4), "strictly increasing"),
        (dict(kept=(0, 5), num_teacher_layers=4), "outside"),
    ],
)
def test_bad_plans(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LayerPlan(**kwargs)


def test_bad_paper_arguments():
    with pytest.raises(ValueError, match="keep_first"):
        LayerPlan.paper(3, keep_first=2, keep_last=2)


def test_missing_plan_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="boomerang_plan.json"):
        LayerPlan.load(tmp_path)
