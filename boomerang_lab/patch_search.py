"""Search the patch order on calibration KL: KLPatch (greedy) and the optimal order (exact DP over patch sets).

Blocks are the multi-layer student layers `plan.multi_layer`, numbered b = 0..K-1 in layer order; a set of patched
blocks is a bitmask (bit b = block b). Patching block b patches its group: the student layers
`Order.from_blocks(plan, plan.multi_layer).steps[b]` (the block and the single-layer ones that ride along with it).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .adapters import layers_of
from .atomic import atomic_write_text
from .data import CORPUS_FILES, data_file
from .family import Family, OrderLike, register_order
from .orders import Order
from .plan import PLAN_FILE, LayerPlan

CALIBRATION = {"num_sequences": 64, "seq_len": 256, "seed": 0}
"""The default calibration set: 64 windows of 256 training-corpus tokens."""


# --- calibration data ----------------------------------------------------------------------------------------------
def calibration_set(
    tokenizer, num_sequences: int = 64, seq_len: int = 256, seed: int = 0, files: Sequence[str] = CORPUS_FILES
) -> torch.Tensor:
    """[num_sequences, seq_len] token ids: random windows of training text, taking the corpus files in turn."""
    if num_sequences < 1 or seq_len < 1:
        raise ValueError(f"num_sequences and seq_len must be positive, got {num_sequences} and {seq_len}.")
    texts = {f: data_file(f).read_text(encoding="utf-8") for f in files}
    rng, span, rows = random.Random(seed), 16 * (seq_len + 1), []
    for i in range(num_sequences):
        name = files[i % len(files)]
        start = rng.randrange(max(1, len(texts[name]) - span))
        ids = tokenizer(texts[name][start : start + span], add_special_tokens=False)["input_ids"]
        if len(ids) < seq_len + 1:
            raise ValueError(f"{name} gave only {len(ids)} tokens at offset {start}; seq_len={seq_len} is too long.")
        rows.append(ids[1 : seq_len + 1])  # the first token may be a cut word
    return torch.tensor(rows)


def teacher_tokenizer(family: Family, purpose: str, instead: str):
    """The teacher's tokenizer, loaded from its `name_or_path` (a directory or a hub id); a clear error naming
    `purpose` and what to call `instead` when none loads."""
    from transformers import AutoTokenizer

    source = family.teacher.name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(source) if source else None
    except (OSError, ValueError):
        tokenizer = None
    if tokenizer is None:
        raise ValueError(
            f"{purpose} needs the teacher's tokenizer, and none loads from the teacher's name_or_path {source!r}; "
            f"call {instead} instead."
        )
    return tokenizer


def default_calibration(family: Family) -> torch.Tensor:
    """CALIBRATION drawn with the teacher's tokenizer, loaded from its `name_or_path` (a directory or a hub id)."""
    tokenizer = teacher_tokenizer(
        family, "The default calibration set", "search(family, name, calibration_set(tokenizer))"
    )
    return calibration_set(tokenizer, **CALIBRATION)


# --- KL of members -------------------------------------------------------------------------------------------------
def _kl_sum(logits: torch.Tensor, target_probs: torch.Tensor, neg_entropy: torch.Tensor) -> torch.Tensor:
    """Σ over tokens of KL(p || softmax(logits)) = Σ p log p - Σ (p·z - logsumexp z) (Σ_v p = 1)."""
    z = logits.flatten(0, -2).float()
    return neg_entropy - ((target_probs * z).sum(-1) - torch.logsumexp(z, -1)).sum()


def _targets(teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's next-token distributions [tokens, vocab] and Σ_tokens Σ_v p log p."""
    logp = torch.log_softmax(teacher_logits.flatten(0, -2).float(), -1)
    probs = logp.exp()
    return probs, (probs * logp).sum()


@torch.no_grad()
def order_kl(family: Family, order: OrderLike, calibration: torch.Tensor, batch_size: int = 8) -> list[float]:
    """Mean per-token KL(teacher || member) of every size k = 0..K of `order`, each member run by family.build."""
    resolved = family.order(order)
    device = family.teacher.device
    sums = torch.zeros(resolved.num_sizes + 1, dtype=torch.float64, device=device)
    for ids in calibration.split(batch_size):
        ids = ids.to(device)
        probs, neg_entropy = _targets(family.teacher(ids, use_cache=False).logits)
        for k in range(resolved.num_sizes + 1):
            sums[k] += _kl_sum(family.build(k, resolved)(ids, use_cache=False).logits, probs, neg_entropy)
    return (sums / calibration.numel()).tolist()


def objective(kl: Sequence[float]) -> float:
    """The search objective: the KL summed over the intermediate sizes 1..K-1 (sizes 0 and K are fixed)."""
    return float(sum(kl[1:-1]))


def groups(plan: LayerPlan) -> tuple[tuple[int, ...], ...]:
    """The student layers patched with each block, in layer order (contiguous, covering every student layer)."""
    steps = Order.from_blocks(plan, plan.multi_layer).steps
    if [j for s in steps for j in s] != list(range(plan.num_student_layers)):
        raise AssertionError(f"Block groups {steps} are not contiguous over the student layers of {plan}.")
    return steps


def patched_layers(plan: LayerPlan, mask: int) -> list[int]:
    """The student layers patched by the set of blocks `mask`."""
    return [j for b, group in enumerate(groups(plan)) if mask >> b & 1 for j in group]


class _Batch:
    """One calibration batch: the teacher's targets, and what every layer receives besides its hidden state."""

    def __init__(self, family: Family, ids: torch.Tensor):
        everything = Order.explicit([list(range(family.plan.num_student_layers))], family.plan)
        self.calls: dict[nn.Module, tuple[tuple, dict]] = {}
        self.embeds = []  # input of layer 0: [student embeddings, teacher embeddings]
        self._capture(family.build(0, everything), ids)
        self.probs, self.neg_entropy = _targets(self._capture(family.build(1, everything), ids))

    def _capture(self, member: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        """Run `member`, recording each layer's arguments besides the hidden state; return its logits."""

        def record(module, args, kwargs):
            if module is layers[0]:
                self.embeds.append(args[0] if args else kwargs["hidden_states"])
            self.calls[module] = (args[1:], {k: v for k, v in kwargs.items() if k != "hidden_states"})

        layers = layers_of(member)
        hooks = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in layers]
        try:
            return member(ids, use_cache=False).logits
        finally:
            for hook in hooks:
                hook.remove()

    def run(self, layers: Sequence[nn.Module], hidden: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            args, kwargs = self.calls[layer]
            hidden = layer(hidden, *args, **kwargs)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        return hidden


@torch.no_grad()
def subset_kl(
    family: Family,
    calibration: torch.Tensor,
    masks: Sequence[int] | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> torch.Tensor:
    """Mean per-token KL(teacher || member) for each set of patched blocks in `masks` (default: all 2^K sets).

    A depth-first walk over the blocks in layer order: at depth b it branches on "block b patched or not", runs only
    that block's layers (teacher block or student layers) on the hidden state cached at the block boundary, and at a
    leaf applies the final norm + head. The embeddings are the teacher's iff block 0 is patched (it holds student
    layer 0) and the norm + head the teacher's iff block K-1 is (it holds the last student layer), as in
    Family._assemble; every layer gets exactly the arguments the model's backbone gives it (recorded once per batch
    from the all-student and all-teacher members), so each value equals the KL of family.build for that set.
    Time, for all 2^K sets on T calibration tokens: (2^(K+1) - 2) block forwards + 2^K heads (vs 2^K full forwards),
    i.e. O(2^K · T · (2·c_block + c_head)); memory O(K·B·L·H) cached hidden states + O(B·L·V) teacher distributions
    and logits for a batch of B sequences of L tokens (H hidden size, V vocabulary), + O(2^K) results.
    The head dominates for large vocabularies: SmolLM2 (K=14, V=49152) needs 2^14 heads over T tokens, minutes on a
    GPU for T = 64 x 256 and far too long on a CPU (use fewer calibration tokens there;
    benchmarks/bench_patch_search.py).
    """
    K, plan = family.K, family.plan
    if K < 1:
        raise ValueError(f"{plan} has no multi-layer student layer: there is no patch order to search.")
    masks = np.arange(2**K) if masks is None else np.asarray(masks, dtype=np.int64)
    if masks.size == 0 or masks.min() < 0 or masks.max() >= 2**K:
        raise ValueError(f"Block sets must be bitmasks in 0..{2**K - 1} (K={K}); got {masks.tolist()[:8]}...")
    unique, inverse = np.unique(masks, return_inverse=True)
    t_layers, s_layers = layers_of(family.teacher), layers_of(family.student)
    blocks = [([s_layers[j] for j in g], [t_layers[i] for j in g for i in plan.block(j)]) for g in groups(plan)]
    a = family.adapter
    heads = [
        nn.Sequential(*(m.get_submodule(p) for p in (a.final_norm, a.head) if p))  # no final norm: post-LN
        for m in (family.student, family.teacher)
    ]
    device = family.teacher.device
    totals = torch.zeros(len(unique), dtype=torch.float64, device=device)

    def walk(batch: _Batch, depth: int, hidden: torch.Tensor | None, index: np.ndarray) -> None:
        if depth == K:
            head = heads[int(unique[index[0]] >> (K - 1) & 1)]
            totals[int(index[0])] += _kl_sum(head(hidden), batch.probs, batch.neg_entropy)
            bar.update(1)
            return
        bit = unique[index] >> depth & 1
        for patched in (0, 1):
            branch = index[bit == patched]
            if branch.size:
                start = batch.embeds[patched] if depth == 0 else hidden
                walk(batch, depth + 1, batch.run(blocks[depth][patched], start), branch)

    batches = calibration.split(batch_size)
    with tqdm(total=len(batches) * len(unique), desc=f"subset KL ({len(unique)} sets)", disable=not progress) as bar:
        for ids in batches:
            walk(_Batch(family, ids.to(device)), 0, None, np.arange(len(unique)))
    return (totals / calibration.numel()).cpu()[torch.as_tensor(inverse)]


# --- the searches --------------------------------------------------------------------------------------------------
def klpatch(family: Family, calibration: torch.Tensor, batch_size: int = 8, progress: bool = True) -> Order:
    """Greedy KLPatch: at each size patch the remaining block whose member has the lowest KL to the teacher.

    K(K+1)/2 - 1 members scored, each size's candidates in one subset_kl walk (they share the prefix before their
    new block); K calibration passes of the all-student and all-teacher members."""
    chosen, sequence = 0, []
    for _ in tqdm(range(family.K - 1), desc="klpatch", disable=not progress):
        candidates = [chosen | 1 << b for b in range(family.K) if not chosen >> b & 1]
        kl = subset_kl(family, calibration, candidates, batch_size, progress=False)
        best = candidates[int(kl.argmin())]
        sequence.append((best ^ chosen).bit_length() - 1)
        chosen = best
    sequence += [b for b in range(family.K) if not chosen >> b & 1]
    return Order.from_blocks(family.plan, [family.plan.multi_layer[b] for b in sequence], name="klpatch")


def shortest_path(kl: Sequence[float] | np.ndarray | torch.Tensor) -> list[int]:
    """The block sequence b_1..b_K minimising Σ_{k=1..K} kl[S_k], S_k = {b_1..b_k}, given kl for all 2^K sets.

    Dynamic programming over patch sets in order of size: best[S] = kl[S] + min_{b in S} best[S \\ b], best[{}] = 0.
    Time O(K·2^K) (vectorised over the sets of each size), memory O(2^K). kl[full set] is the same for every path,
    so this also minimises the sum over the intermediate sizes 1..K-1.
    """
    kl = np.asarray(kl, dtype=np.float64)
    K = len(kl).bit_length() - 1
    if len(kl) != 2**K or K < 1:
        raise ValueError(f"kl must hold one value per set of K blocks (2^K values, K >= 1); got {len(kl)}.")
    sets = np.arange(2**K)
    size = np.array([bin(s).count("1") for s in sets])
    best, last = np.full(2**K, np.inf), np.zeros(2**K, dtype=np.int64)
    best[0] = 0.0
    for n in range(1, K + 1):
        level = sets[size == n]
        for b in range(K):
            has = level[level >> b & 1 == 1]
            via = best[has ^ (1 << b)]
            better = via < best[has]
            best[has[better]], last[has[better]] = via[better], b
        best[level] += kl[level]
    sequence, s = [], 2**K - 1
    while s:
        sequence.append(int(last[s]))
        s ^= 1 << int(last[s])
    return sequence[::-1]


def optimal(family: Family, calibration: torch.Tensor, batch_size: int = 8, progress: bool = True) -> Order:
    """The order minimising the calibration KL summed over all sizes: subset_kl for all 2^K sets + shortest_path."""
    sequence = shortest_path(subset_kl(family, calibration, None, batch_size, progress))
    return Order.from_blocks(family.plan, [family.plan.multi_layer[b] for b in sequence], name="optimal")


def brute_force(kl: Sequence[float] | np.ndarray | torch.Tensor) -> tuple[float, list[int]]:
    """The best sum and block sequence by trying all K! permutations (a check of shortest_path for small K)."""
    kl = np.asarray(kl, dtype=np.float64)
    K = len(kl).bit_length() - 1
    best = (np.inf, [])
    for perm in itertools.permutations(range(K)):
        masks = np.cumsum([1 << b for b in perm])
        best = min(best, (float(kl[masks].sum()), list(perm)), key=lambda x: x[0])
    return best


# --- cached per family ---------------------------------------------------------------------------------------------
SEARCHES = {"klpatch": klpatch, "optimal": optimal}


def search(
    family: Family, name: str, calibration: torch.Tensor | None = None, batch_size: int = 8, progress: bool = True
) -> Order:
    """The `name` order ("klpatch" or "optimal") of this family, cached in the family and next to the student.

    A saved `order_<name>.json` in the student's directory (one with a boomerang plan) is reused when it was
    searched on the same calibration ids, plan and weights; otherwise the order is searched and saved there.
    Without `calibration`, the default calibration set (CALIBRATION, teacher's tokenizer) is used.
    """
    if name not in SEARCHES:
        raise ValueError(f"Unknown searched order {name!r}; use one of {sorted(SEARCHES)}.")
    calibration = default_calibration(family) if calibration is None else calibration
    key = _fingerprint(family, calibration)
    path = _student_dir(family)
    path = path / f"order_{name}.json" if path else None
    if path and path.exists() and json.loads(path.read_text()).get("fingerprint") == key:
        order = Order.load(path)
    else:
        order = SEARCHES[name](family, calibration, batch_size, progress)
        if path:
            atomic_write_text(path, json.dumps({**order.to_dict(), "fingerprint": key}, indent=2) + "\n")
    family._orders[name] = order
    return order


def _student_dir(family: Family) -> Path | None:
    """The student's saved directory if it is a boomerang student of this plan, else None."""
    path = Path(family.student.name_or_path or "")
    if path.name and (path / PLAN_FILE).exists() and LayerPlan.load(path) == family.plan:
        return path
    return None


@torch.no_grad()
def _fingerprint(family: Family, calibration: torch.Tensor) -> str:
    """A hash of the calibration ids, the plan, the dtype and a checksum of the teacher's and student's weights."""
    sums = [
        torch.stack([p.double().sum() for p in m.parameters()]).sum().item() for m in (family.teacher, family.student)
    ]
    parts = [
        calibration.cpu().numpy().tobytes(),
        str(tuple(calibration.shape)).encode(),
        repr(family.plan).encode(),
        str(family.teacher.dtype).encode(),
        f"{sums[0]:.8e} {sums[1]:.8e}".encode(),
    ]
    return hashlib.sha256(b"|".join(parts)).hexdigest()


@register_order("klpatch")
def klpatch_order(family: Family) -> Order:
    """The "klpatch" order: greedy calibration-KL patching, searched once per family (see `search`)."""
    return search(family, "klpatch")


@register_order("optimal")
def optimal_order(family: Family) -> Order:
    """The "optimal" order: the patch sets of least summed calibration KL, searched once per family (see `search`)."""
    return search(family, "optimal")
