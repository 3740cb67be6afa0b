"""LaCo's RDSC layer merge and its search (laco.py), against direct computations on a tiny Llama."""

import pytest
import torch
from transformers import LlamaForCausalLM

from boomerang_lab.evaluate.baselines import laco_pruning
from boomerang_lab.evaluate.laco import LaCoConfig, laco, merged_names, rdsc_merge
from tiny import VOCAB, tiny_config, tiny_model

CALIBRATION = torch.randint(0, VOCAB, (3, 12), generator=torch.Generator().manual_seed(0))


def test_rdsc_merge_is_the_formula_out_of_place_not_the_in_place_collapse():
    teacher = tiny_model("llama")
    a, b, c = (teacher.model.layers[i] for i in (4, 5, 6))
    merged = rdsc_merge([a, b, c])
    q = [layer.self_attn.q_proj.weight for layer in (a, b, c)]
    assert torch.allclose(merged.self_attn.q_proj.weight, q[0] + (q[1] - q[0]) + (q[2] - q[0]))
    assert not torch.allclose(merged.self_attn.q_proj.weight, q[2])  # what the in-place update collapses to
    assert torch.equal(merged.input_layernorm.weight, a.input_layernorm.weight)  # norms stay layer l's
    assert not any("norm" in name for name in merged_names(a))
    assert torch.equal(a.self_attn.q_proj.weight, q[0])  # the inputs are untouched


def test_laco_model_equals_a_directly_built_merged_model():
    teacher = tiny_model("llama")
    config = LaCoConfig(merge=4, lowest=1, interval=2, threshold=-1.0, sentences=3, tokens=12)  # every merge kept
    result = laco(teacher, 5, CALIBRATION, config)
    # From the top: l = 8 - 4 = 4 merges layers 4..7 into one; 5 layers reached.
    assert result.groups == [[0], [1], [2], [3], [4, 5, 6, 7]] and result.threshold_met
    direct = LlamaForCausalLM(tiny_config("llama", layers=5)).eval()
    weights = teacher.state_dict()
    state = {k: v for k, v in weights.items() if not any(k.startswith(f"model.layers.{j}.") for j in (4, 5, 6, 7))}
    for key, value in weights.items():
        if key.startswith("model.layers.4."):  # theta_4 + sum_k (theta_{4+k} - theta_4); norms: layer 4's
            name = key.removeprefix("model.layers.4.")
            if "norm" not in name:
                value = value + sum(weights[f"model.layers.{j}.{name}"] - value for j in (5, 6, 7))
            state[key] = value
    direct.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(result.model(CALIBRATION).logits, direct(CALIBRATION).logits, atol=1e-5)
        assert torch.equal(teacher(CALIBRATION).logits, tiny_model("llama")(CALIBRATION).logits)  # teacher untouched


def test_laco_reaches_every_target_depth_and_flags_a_threshold_it_could_not_meet():
    teacher = tiny_model("llama")
    for depth in range(2, 8):
        result = laco(teacher, depth, CALIBRATION, LaCoConfig(lowest=1, threshold=0.0, sentences=3, tokens=12))
        assert result.model.config.num_hidden_layers == depth == len(result.groups)
        assert sum(result.groups, []) == list(range(8))  # contiguous groups, in order
        assert result.groups[0] == [0]  # L=1: nothing is merged into the first layer
    strict = laco(teacher, 6, CALIBRATION, LaCoConfig(lowest=1, threshold=1.0, sentences=3, tokens=12))
    assert not strict.threshold_met and strict.model.config.num_hidden_layers == 6


def test_laco_errors_name_the_bad_value():
    teacher = tiny_model("llama")
    with pytest.raises(ValueError, match="num_layers must be in 1..8, got 9"):
        laco(teacher, 9, CALIBRATION)
    with pytest.raises(ValueError, match="threshold is a cosine"):
        LaCoConfig(threshold=2.0)
    with pytest.raises(ValueError, match="cannot reach 1 layers"):
        laco(teacher, 1, CALIBRATION, LaCoConfig(lowest=1, threshold=-1.0))


def test_laco_pruning_baseline_shares_unmerged_layers_with_the_teacher():
    teacher = tiny_model("llama")
    model = laco_pruning(teacher, 6, CALIBRATION, LaCoConfig(lowest=1, threshold=-1.0))
    shared = {id(p) for p in teacher.parameters()}
    layers = model.model.layers
    assert len(layers) == 6 and id(layers[0].self_attn.q_proj.weight) in shared
    assert id(model.lm_head.weight) in shared


def test_sweep_method_laco_evaluates_laco_at_each_sizes_layer_count(tmp_path):
    from boomerang_lab.data import calibration_set
    from boomerang_lab.evaluate import PerplexityConfig, perplexity, sweep
    from boomerang_lab.models.loading import load_model
    from boomerang_lab.models.plan import LayerPlan

    teacher, tok = load_model("smollm2-tiny-random")
    ppl = PerplexityConfig(window=64, stride=64, max_tokens=128)
    plan = LayerPlan.paper(8)
    table = sweep(
        teacher,
        tok,
        None,
        plan,
        methods=("laco",),
        tasks=["wikitext_ppl"],
        ppl=ppl,
        ks=[0, 2],
        profile="smoke",
        results=tmp_path / "r.csv",
        progress=False,
    )
    token = table[table.metric == "token_perplexity"].set_index("k")
    assert set(token.method) == {"laco"} and set(token.order) == {"rdsc"}
    assert token.layers.to_dict() == {0: 5, 2: 7}
    config = LaCoConfig()
    expected = laco_pruning(teacher, 5, calibration_set(tok, config.sentences, config.tokens), config)
    assert token.value[0] == pytest.approx(perplexity(expected, tok, config=ppl)["token_perplexity"])


def test_official_merge_keeps_the_last_layer_of_each_window():
    """The official code's in-place update ends at the window's last layer (up to rounding), norms from layer l."""
    teacher = tiny_model("llama")
    a, b, c = (teacher.model.layers[i] for i in (4, 5, 6))
    merged = rdsc_merge([a, b, c], variant="official")
    for name in merged_names(a):
        got, last = merged.get_parameter(name), c.get_parameter(name)
        torch.testing.assert_close(got, last, rtol=0, atol=1e-6)
        assert not torch.allclose(got, a.get_parameter(name))
    assert torch.equal(merged.input_layernorm.weight, a.input_layernorm.weight)
    assert torch.equal(merged.post_attention_layernorm.weight, a.post_attention_layernorm.weight)


def test_official_variant_stops_below_the_last_layer_and_keeps_each_windows_last_layer():
    teacher = tiny_model("llama")
    config = LaCoConfig(merge=4, lowest=1, threshold=-1.0, sentences=3, tokens=12, variant="official")
    assert config.bounds(8) == (1, 7)  # HIGHEST_LAY: the last layer's index
    result = laco(teacher, 5, CALIBRATION, config)
    # lay = H - C = 3: layers 3..6 merge into one; the last layer (7) stays itself.
    assert result.groups == [[0], [1], [2], [3, 4, 5, 6], [7]] and result.threshold_met and not result.forced_merges
    merged = result.model.model.layers[3]
    for name in merged_names(merged):
        torch.testing.assert_close(
            merged.get_parameter(name), teacher.model.layers[6].get_parameter(name), atol=1e-6, rtol=0
        )
    assert torch.equal(merged.input_layernorm.weight, teacher.model.layers[3].input_layernorm.weight)
    assert result.model.model.layers[4] is teacher.model.layers[7]
    paper = laco(teacher, 5, CALIBRATION, LaCoConfig(merge=4, lowest=1, threshold=-1.0, sentences=3, tokens=12))
    assert paper.groups[-1] == [4, 5, 6, 7]  # the paper's window reaches the last layer


def test_official_similarity_is_per_sentence_over_flattened_states():
    """One sentence whose first token matches the reference with a large norm and whose second is orthogonal with a
    small one: per token the cosines are 1 and 0 (mean 0.5); flattened, the large token dominates (about 1)."""
    from types import SimpleNamespace

    from boomerang_lab.evaluate.laco import similarity

    reference = torch.tensor([[[10.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, -1.0]]])
    states = torch.tensor([[[10.0, 0.0], [1.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])

    model = SimpleNamespace(base_model=lambda input_ids, **kwargs: SimpleNamespace(last_hidden_state=states))

    ids = torch.zeros(2, 2, dtype=torch.long)
    flat = [torch.nn.functional.cosine_similarity(s.flatten(), r.flatten(), dim=0) for s, r in zip(states, reference)]
    assert similarity(model, reference, ids, "official") == pytest.approx(torch.stack(flat).mean().item())
    assert similarity(model, reference, ids, "official") == pytest.approx((100 / 101 + 0.5) / 2)
    assert similarity(model, reference, ids, "paper") == pytest.approx((1 + 0 + 1 + 0) / 4)


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_a_threshold_no_merge_reaches_is_reported_or_refused(variant):
    from boomerang_lab.evaluate.laco import LaCoThresholdError, LaCoThresholdWarning

    teacher = tiny_model("llama")
    settings = dict(lowest=1, threshold=1.0, sentences=3, tokens=12, variant=variant)  # no merge beats cos 1
    with pytest.warns(LaCoThresholdWarning, match=r"no merge at 8 layers reaches the threshold T=1.0"):
        forced = laco(teacher, 6, CALIBRATION, LaCoConfig(**settings))
    assert forced.forced_merges == 1 and not forced.threshold_met and len(forced.best_below) == 1
    assert forced.model.config.num_hidden_layers == 6
    with pytest.raises(LaCoThresholdError, match="strict=False"):
        laco(teacher, 6, CALIBRATION, LaCoConfig(strict=True, **settings))
    met = laco(teacher, 6, CALIBRATION, LaCoConfig(strict=True, **{**settings, "threshold": -1.0}))
    assert met.threshold_met and met.forced_merges == 0
    model = laco_pruning(teacher, 6, CALIBRATION, LaCoConfig(**{**settings, "threshold": -1.0}))
    assert model.boomerang["laco_variant"] == variant and model.boomerang["forced_merges"] == 0


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="variant must be one of paper, official, got 'authors'"):
        LaCoConfig(variant="authors")


def test_final_states_are_the_models_last_hidden_states():
    from boomerang_lab.evaluate.laco import final_states

    teacher = tiny_model("llama")
    with torch.no_grad():
        expected = teacher(input_ids=CALIBRATION, output_hidden_states=True).hidden_states[-1]
    assert torch.equal(final_states(teacher, CALIBRATION), expected)
