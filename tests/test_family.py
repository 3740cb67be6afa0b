"""Exactness of the interpolated family on tiny random models of every decoder architecture."""

import copy

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from boomerang_lab import Family, LayerPlan, Order, init_student
from boomerang_lab.models.adapters import get_adapter, layers_of
from tiny import ARCHS, VOCAB, perturb, tiny_model

LAYERS = 8


def make_family(arch: str, plan: LayerPlan | None = None, tie: bool = True) -> Family:
    teacher = tiny_model(arch, LAYERS, tie=tie)
    plan = plan or LayerPlan.paper(LAYERS)
    student = perturb(init_student(teacher, plan))
    return Family(teacher, student, plan)


def by_hand(family: Family, patched: set[int]) -> nn.Module:
    """The member assembled the paper's way: deep copies of every piece, layer indices rewritten on the copies."""
    t, s, plan, a = family.teacher, family.student, family.plan, get_adapter(family.teacher)
    model = copy.deepcopy(t)
    layers, types = [], []
    for j in range(plan.num_student_layers):
        sources = [(t, i) for i in plan.block(j)] if j in patched else [(s, j)]
        for src, i in sources:
            layers.append(copy.deepcopy(layers_of(src)[i]))
            if getattr(src.config, "layer_types", None):
                types.append(src.config.layer_types[i])
    for pos, layer in enumerate(layers):
        for m in layer.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = pos
    embed_src = t if 0 in patched else s
    head_src = t if plan.num_student_layers - 1 in patched else s
    parent, _, name = a.layers.rpartition(".")
    setattr(model.get_submodule(parent), name, nn.ModuleList(layers))
    for path, src in [(p, embed_src) for p in a.embeddings] + [(a.final_norm, head_src), (a.head, head_src)]:
        parent, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, name, copy.deepcopy(src.get_submodule(path)))
    model.config.num_hidden_layers = len(layers)
    if types:
        model.config.layer_types = types
    return model.eval()


def tokens(batch: int = 2, length: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=ARCHS)
def family(request):
    return make_family(request.param)


@torch.no_grad()
def test_endpoints_are_student_and_teacher(family):
    x = tokens()
    for order in ("last", "first"):
        assert torch.equal(family.build(0, order)(x).logits, family.student(x).logits)
        assert torch.equal(family.build(family.K, order)(x).logits, family.teacher(x).logits)


@torch.no_grad()
@pytest.mark.parametrize("order", ["last", "first", [2, 0], [[1, 4], 3]])
def test_every_member_matches_hand_assembled_copy(family, order):
    x = tokens()
    resolved = family.order(order)
    for k in range(resolved.num_sizes + 1):
        member = family.build(k, order)
        reference = by_hand(family, set(resolved.patched(k)))
        out = member(x, output_hidden_states=True)
        ref = reference(x, output_hidden_states=True)
        assert torch.equal(out.logits, ref.logits), (order, k)
        assert len(out.hidden_states) == len(ref.hidden_states) == len(layers_of(reference)) + 1
        assert all(torch.equal(a, b) for a, b in zip(out.hidden_states, ref.hidden_states))


@torch.no_grad()
def test_generate_with_cache_equals_greedy_without_cache(family):
    x = tokens(length=6)
    mask = torch.ones_like(x)
    for order in ("last", "first"):
        for k in range(family.K + 1):
            member = family.build(k, order)
            out = member.generate(
                x, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None
            )
            seq = x
            for _ in range(6):
                seq = torch.cat([seq, member(seq, use_cache=False).logits[:, -1:].argmax(-1)], 1)
            assert torch.equal(out, seq), (order, k)


@torch.no_grad()
def test_teacher_and_student_unchanged_after_members_run(family):
    x = tokens()
    mask = torch.ones_like(x)
    before = [
        (m(x).logits.clone(), len(m(x, output_hidden_states=True).hidden_states))
        for m in (family.teacher, family.student)
    ]
    gen_before = family.teacher.generate(x, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    for order in ("last", "first"):
        for k in range(family.K + 1):
            member = family.build(k, order)
            member(x, output_hidden_states=True)
            member.generate(x, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0)
    for m, (logits, n_hidden) in zip((family.teacher, family.student), before):
        assert torch.equal(m(x).logits, logits)
        assert len(m(x, output_hidden_states=True).hidden_states) == n_hidden
    gen_after = family.teacher.generate(x, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(gen_before, gen_after)
    # Members rewrite the shared layers' cache indices while they run; the teacher's own are back in place after.
    for model in (family.teacher, family.student):
        for i, layer in enumerate(layers_of(model)):
            assert {m.layer_idx for m in layer.modules() if hasattr(m, "layer_idx")} <= {i}, (type(model), i)


def test_members_share_weights_and_layer_indices_are_restored(family):
    member = family.build(2, "last")
    teacher_ptrs = {p.data_ptr() for p in family.teacher.parameters()}
    student_ptrs = {p.data_ptr() for p in family.student.parameters()}
    assert {p.data_ptr() for p in member.parameters()} <= teacher_ptrs | student_ptrs
    idx = lambda model: [m.layer_idx for m in model.modules() if hasattr(m, "layer_idx")]
    t_before, s_before = idx(family.teacher), idx(family.student)
    member(tokens())
    assert idx(family.teacher) == t_before and idx(family.student) == s_before


@torch.no_grad()
def test_export_round_trip(family, tmp_path):
    x = tokens()
    for k in (0, 1, family.K):
        member = family.build(k, "last")
        path = family.export(k, tmp_path / f"k{k}")
        loaded = AutoModelForCausalLM.from_pretrained(path).eval()
        assert loaded.config.num_hidden_layers == len(layers_of(member))
        assert torch.equal(loaded(x).logits, member(x).logits)
        assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_sizes_count_shared_and_tied_tensors_once(arch):
    family = make_family(arch)
    table = family.sizes("last")
    assert list(table.k) == list(range(family.K + 1))
    assert list(table.layers) == [5, 6, 7, 8]
    t_params = sum(p.numel() for p in family.teacher.parameters())
    s_params = sum(p.numel() for p in family.student.parameters())
    assert table.params.iloc[0] == s_params and table.params.iloc[-1] == t_params
    embed = family.teacher.get_input_embeddings().weight.numel()
    # k=1 of "last": student embeddings feed the teacher's (tied) head: the head is an extra tensor now.
    member = family.build(1, "last")
    layer_params = sum(p.numel() for l in layers_of(member) for p in l.parameters())
    assert table.params.iloc[1] == s_params - sum(
        p.numel() for l in layers_of(family.student) for p in l.parameters()
    ) + layer_params + embed + sum(
        p.numel() for p in family.teacher.get_submodule(get_adapter(member).final_norm).parameters()
    ) - sum(p.numel() for p in family.student.get_submodule(get_adapter(member).final_norm).parameters())
    assert (table.bytes == table.params * 4).all()


def _perturb_layers(model, seed: int = 1):
    """Stand-in for a distillation with frozen embeddings and head: only the decoder layers move."""
    perturb(nn.ModuleList(layers_of(model)), seed=seed)
    return model


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_frozen_embeddings_are_the_teachers_tensors_after_save_and_load(arch, tmp_path):
    """A student trained with frozen embeddings and head, saved and loaded, holds them as a second copy; the family
    makes them the teacher's, so that member sizes grow with layers and never exceed the teacher's."""
    teacher = tiny_model(arch, LAYERS)
    plan = LayerPlan.paper(LAYERS)
    trained = _perturb_layers(init_student(teacher, plan))
    trained.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.get_input_embeddings().weight is not teacher.get_input_embeddings().weight
    x = tokens()
    with torch.no_grad():
        student_logits, teacher_logits = loaded(x).logits, teacher(x).logits
    family = Family(teacher, loaded, plan)
    assert loaded.get_input_embeddings().weight is teacher.get_input_embeddings().weight
    assert loaded.get_output_embeddings().weight is teacher.get_output_embeddings().weight
    assert not any(name.startswith(get_adapter(teacher).layers) for name in family.shared)  # trained layers stay
    t_params = sum(p.numel() for p in teacher.parameters())
    for order in ("last", "first"):
        table = family.sizes(order)
        assert table.params.is_monotonic_increasing and table.params.iloc[-1] == t_params
        assert (table.params.diff().dropna() > 0).all() and (table.bytes == table.params * 4).all()
        with torch.no_grad():
            assert torch.equal(family.build(0, order)(x).logits, student_logits)
            assert torch.equal(family.build(family.K, order)(x).logits, teacher_logits)
    loaded_ids = {id(p) for p in loaded.parameters()} | {id(p) for p in teacher.parameters()}
    assert all(id(p) in loaded_ids for k in range(family.K + 1) for p in family.build(k).parameters())


def test_a_trained_student_shares_nothing():
    family = make_family("llama")
    assert family.shared == []


def test_for_budget_picks_largest_fitting_member():
    family = make_family("gpt_neox")
    table = family.sizes()
    budget = int(table.params.iloc[2])
    assert family.for_budget(max_params=budget).boomerang["k"] == 2
    assert family.for_budget(max_bytes=int(table.bytes.iloc[1])).boomerang["k"] == 1
    with pytest.raises(ValueError, match="smallest"):
        family.for_budget(max_params=10)


def test_building_is_cached_and_orders_resolve():
    family = make_family("llama")
    assert family.build(1) is family.build(1, Order.last(family.plan))
    assert family.order("first").steps == Order.first(family.plan).steps
    member = family.build(order=[3])
    assert member.boomerang["patched"] == [3]


def test_qwen3_sliding_window_layer_types_follow_the_layers():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=64,
        use_sliding_window=True,
        sliding_window=4,
        max_window_layers=3,
        max_position_embeddings=64,
    )
    teacher = Qwen3ForCausalLM(config).eval()
    assert len(set(teacher.config.layer_types)) == 2
    plan = LayerPlan.paper(LAYERS)
    family = Family(teacher, perturb(init_student(teacher, plan)), plan)
    x = tokens(length=12)
    with torch.no_grad():
        for k in range(family.K + 1):
            member = family.build(k, "last")
            assert member.config.layer_types == [
                l.self_attn.layer_type if hasattr(l.self_attn, "layer_type") else l.attention_type
                for l in layers_of(member)
            ]
            assert torch.equal(member(x).logits, by_hand(family, set(family.order("last").patched(k)))(x).logits)


# --- bad input ---------------------------------------------------------------------------------------------------
def test_k_out_of_range():
    family = make_family("llama")
    with pytest.raises(ValueError, match=r"valid k are 0\.\.3"):
        family.build(4)
    with pytest.raises(ValueError, match=r"valid k are 0\.\.3"):
        family.build(-1)


def test_unknown_order():
    with pytest.raises(ValueError, match="Unknown order 'middle'"):
        make_family("llama").order("middle")


def test_plan_that_does_not_fit():
    teacher = tiny_model("llama", LAYERS)
    with pytest.raises(ValueError, match="8 layers"):
        init_student(teacher, LayerPlan.paper(12))
    student = init_student(teacher, LayerPlan.paper(LAYERS))
    with pytest.raises(ValueError, match="student has 5"):
        Family(teacher, student, LayerPlan.paper(LAYERS, keep_first=2))


def test_unknown_architecture():
    from transformers import MambaConfig, MambaForCausalLM

    model = MambaForCausalLM(MambaConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, state_size=4))
    with pytest.raises(ValueError, match="Unsupported architecture 'mamba'.*llama"):
        get_adapter(model)


def test_mismatched_architectures():
    with pytest.raises(ValueError, match="same architecture"):
        Family(tiny_model("llama", 4), tiny_model("gpt2", 4), LayerPlan.from_kept([0, 1, 2, 3], 4))


def test_explicit_order_errors():
    family = make_family("llama")
    with pytest.raises(ValueError, match="distinct student layers"):
        family.build(1, [1, 1])
    with pytest.raises(ValueError, match="distinct student layers"):
        family.build(1, [9])


@pytest.mark.parametrize("arch", ARCHS)
def test_init_student_is_an_independent_copy_of_the_kept_layers(arch):
    teacher = tiny_model(arch, LAYERS)
    plan = LayerPlan.paper(LAYERS)
    student = init_student(teacher, plan)
    assert not any(t.is_meta for t in [*student.parameters(), *student.buffers()])
    t_layers, s_layers = layers_of(teacher), layers_of(student)
    for j, i in enumerate(plan.kept):
        for (name, a), b in zip(s_layers[j].state_dict().items(), t_layers[i].state_dict().values()):
            assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), name
    head, embed = student.get_output_embeddings().weight, student.get_input_embeddings().weight
    assert (head is embed) == (teacher.get_output_embeddings().weight is teacher.get_input_embeddings().weight)
    # The teacher-initialised student equals the teacher with the cut layers dropped.
    x = tokens()
    with torch.no_grad():
        assert torch.equal(student(x).logits, by_hand(Family(teacher, student, plan), set())(x).logits)
    random = init_student(teacher, plan, random_init=True)
    assert [p.shape for p in random.parameters()] == [p.shape for p in student.parameters()]
    assert not torch.equal(next(random.parameters()), next(student.parameters()))
