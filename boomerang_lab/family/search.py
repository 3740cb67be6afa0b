"""Search the patch order on calibration KL: KLPatch (greedy) and the optimal order (exact DP over patch sets).

Blocks are the multi-layer student layers `plan.multi_layer`, numbered b = 0..K-1 in layer order; a set of patched
blocks is a bitmask (bit b = block b). Patching block b patches its group: the student layers
`Order.from_blocks(plan, plan.multi_layer).steps[b]` (the block and the single-layer ones that ride along with it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..config.search import SearchConfig
from ..data import calibration_set
from ..distill.local import block_errors
from ..models.adapters import layers_of
from ..models.loading import autocast_for
from ..models.orders import Order
from ..models.plan import PLAN_FILE, LayerPlan
from ..store.atomic import atomic_write_text

if TYPE_CHECKING:
    from .members import Family, OrderLike


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
    """Mean per-token KL(teacher || member) of every size k = 0..K of `order`, each member run by family.build (its
    head's input captured and scored with the searches' own arithmetic, so the values equal `subset_kl`'s)."""
    resolved = family.order(order)
    device = family.teacher.device
    _, heads = _blocks_and_heads(family)
    sums = torch.zeros(resolved.num_sizes + 1, dtype=torch.float64, device=device)
    for ids in calibration.split(batch_size):
        ids = ids.to(device)
        targets = _Targets(family.teacher(ids, use_cache=False).logits, heads, 1)
        for k in range(resolved.num_sizes + 1):
            member = family.build(k, resolved)
            head = _Head(member, family.adapter)
            sums[k] += head.kl_sum(_head_input(member, family.adapter, ids), targets)
    return (sums / calibration.numel()).tolist()


def _head_input(model: nn.Module, adapter, ids: torch.Tensor) -> torch.Tensor:
    """The hidden state `model` feeds its final norm (or head, post-LN) on `ids`."""
    seen = []
    first = model.get_submodule(adapter.final_norm or adapter.head)
    hook = first.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        model(ids, use_cache=False)
    finally:
        hook.remove()
    return seen[0]


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


class _Head:
    """A model's final norm + head, and the KL of its logits to fixed teacher targets.

    When the head ends in a linear layer (every decoder here), Σ_v p_v z_v = x · (Σ_v p_v W_v) + p · b for z = W x + b,
    so the teacher's distributions enter only through P W ([tokens, hidden], computed once per batch) and the KL of
    each member costs its head's matmul and one logsumexp, not three more passes over [tokens, vocab] floats."""

    def __init__(self, model: nn.Module, adapter):
        modules = [model.get_submodule(p) for p in (adapter.final_norm, adapter.head) if p]  # no final norm: post-LN
        linear = modules[-1] if isinstance(modules[-1], nn.Linear) else None
        self.pre = nn.Sequential(*modules[:-1]) if linear is not None else nn.Sequential(*modules)
        self.linear = linear

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.pre(hidden)
        return self.linear(x) if self.linear is not None else x

    def kl_sum(self, hidden: torch.Tensor, targets: "_Targets") -> torch.Tensor:
        """Σ over the scored tokens of KL(teacher || softmax(head(hidden)))."""
        hidden = hidden[:, :: targets.stride]
        if self.linear is None:
            return _kl_sum(self.logits(hidden), targets.probs, targets.neg_entropy)
        x = self.pre(hidden).flatten(0, -2)
        pz = (x.float() * targets.pw[id(self.linear)]).sum() + targets.pb[id(self.linear)]
        return targets.neg_entropy - pz + _logsumexp(self.linear(x)).sum()


def _logsumexp(z: torch.Tensor) -> torch.Tensor:
    """logsumexp over the last dim in float32, in place on one copy (about 2x torch.logsumexp on a CPU)."""
    z = z.float()
    top = z.amax(-1, keepdim=True)
    return z.sub_(top).exp_().sum(-1).log_() + top.squeeze(-1)


class _Targets:
    """The teacher's next-token distributions at every `stride`-th position of a batch, reduced to what the KL of a
    member needs: Σ p log p, and P W (+ p · b) for each linear head (or P itself for another head)."""

    def __init__(self, teacher_logits: torch.Tensor, heads: Sequence[_Head], stride: int):
        self.stride = stride
        probs, self.neg_entropy = _targets(teacher_logits[:, ::stride])
        self.pw, self.pb, self.probs = {}, {}, None
        for head in heads:
            if head.linear is None:
                self.probs = probs
            elif id(head.linear) not in self.pw:
                weight = head.linear.weight
                self.pw[id(head.linear)] = probs @ weight.float()
                bias = head.linear.bias
                self.pb[id(head.linear)] = (probs @ bias.float()).sum() if bias is not None else 0.0


class _Batch:
    """One calibration batch: the teacher's targets, and what every layer receives besides its hidden state."""

    def __init__(self, family: Family, ids: torch.Tensor, heads: Sequence[_Head] = (), stride: int = 1):
        everything = Order.explicit([list(range(family.plan.num_student_layers))], family.plan)
        self.calls: dict[nn.Module, tuple[tuple, dict]] = {}
        self.embeds = []  # input of layer 0: [student embeddings, teacher embeddings]
        self._capture(family.build(0, everything), ids)
        self.targets = _Targets(self._capture(family.build(1, everything), ids), heads, stride)

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
    stride: int = 1,
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
    benchmarks/bench_patch_search.py). `stride` > 1 scores the KL at every stride-th position only (every position
    still runs through the layers): the heads' cost divided by `stride`.
    """
    K, plan = family.K, family.plan
    if K < 1:
        raise ValueError(f"{plan} has no multi-layer student layer: there is no patch order to search.")
    masks = np.arange(2**K) if masks is None else np.asarray(masks, dtype=np.int64)
    if masks.size == 0 or masks.min() < 0 or masks.max() >= 2**K:
        raise ValueError(f"Block sets must be bitmasks in 0..{2**K - 1} (K={K}); got {masks.tolist()[:8]}...")
    unique, inverse = np.unique(masks, return_inverse=True)
    blocks, heads = _blocks_and_heads(family)
    device = family.teacher.device
    totals = torch.zeros(len(unique), dtype=torch.float64, device=device)

    def walk(batch: _Batch, depth: int, hidden: torch.Tensor | None, index: np.ndarray) -> None:
        if depth == K:
            head = heads[int(unique[index[0]] >> (K - 1) & 1)]
            totals[int(index[0])] += head.kl_sum(hidden, batch.targets)
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
            walk(_Batch(family, ids.to(device), heads, stride), 0, None, np.arange(len(unique)))
    return (totals / _scored(calibration, stride)).cpu()[torch.as_tensor(inverse)]


# --- the searches --------------------------------------------------------------------------------------------------
def _blocks_and_heads(family: Family) -> tuple[list, list]:
    """Per block b: (its student layers, its teacher layers); the [student, teacher] final norm + head."""
    plan, a = family.plan, family.adapter
    t_layers, s_layers = layers_of(family.teacher), layers_of(family.student)
    blocks = [([s_layers[j] for j in g], [t_layers[i] for j in g for i in plan.block(j)]) for g in groups(plan)]
    return blocks, [_Head(m, a) for m in (family.student, family.teacher)]


def _scored(calibration: torch.Tensor, stride: int) -> int:
    """How many calibration positions the KL is averaged over when every stride-th one is scored."""
    if stride < 1:
        raise ValueError(f"stride must be a positive integer (1: score every position), got {stride}.")
    return calibration.shape[0] * len(range(0, calibration.shape[1], stride))


@torch.no_grad()
def klpatch(
    family: Family, calibration: torch.Tensor, batch_size: int = 8, progress: bool = True, stride: int = 1
) -> Order:
    """Greedy KLPatch: at each size patch the remaining block whose member has the lowest KL to the teacher.

    K(K+1)/2 - 1 members scored, with the same arithmetic as `subset_kl` for each (so the same KL to the last bit),
    and nothing computed twice: the teacher's targets and every layer's arguments are recorded once per calibration
    batch for the whole search; each candidate keeps the hidden states after each of its blocks, and when another
    block b* is chosen, a candidate before b* recomputes only from b* on (its states before b* saw the same blocks)
    while the path of the chosen blocks is read off the winner's states. Time per calibration token: about
    K^2/2 heads (divided by `stride` when every stride-th position is scored) + at most K^3/6 block forwards (far
    fewer when later blocks are chosen first). Memory: O(K^2) hidden states per batch.
    """
    K = family.K
    if K < 1:
        raise ValueError(f"{family.plan} has no multi-layer student layer: there is no patch order to search.")
    blocks, heads = _blocks_and_heads(family)
    device = family.teacher.device
    _scored(calibration, stride)
    batches = [_Batch(family, ids.to(device), heads, stride) for ids in calibration.split(batch_size)]
    paths = []  # per batch: the input of each block d = 1..K-1 on the path of the chosen blocks (entry 0 unused)
    for batch in batches:
        hidden, path = batch.embeds[0], [None]
        for d in range(K - 1):
            hidden = batch.run(blocks[d][0], hidden)
            path.append(hidden)
        paths.append(path)

    chosen, sequence = 0, []
    trails: dict[tuple[int, int], list[torch.Tensor]] = {}  # (batch, candidate b) -> outputs of blocks b, b+1, ...
    for _ in tqdm(range(K - 1), desc="klpatch", disable=not progress):
        candidates = [b for b in range(K) if not chosen >> b & 1]
        totals = torch.zeros(len(candidates), dtype=torch.float64, device=device)
        for i, batch in enumerate(batches):
            for c, b in enumerate(candidates):
                mask, states = chosen | 1 << b, trails.setdefault((i, b), [])
                if not states:
                    states.append(batch.run(blocks[b][1], batch.embeds[1] if b == 0 else paths[i][b]))
                for d in range(b + len(states), K):
                    states.append(batch.run(blocks[d][mask >> d & 1], states[-1]))
                totals[c] += heads[mask >> (K - 1) & 1].kl_sum(states[-1], batch.targets)
        best = candidates[int(totals.argmin())]
        sequence.append(best)
        chosen |= 1 << best
        for i in range(len(batches)):
            paths[i][best + 1 :] = trails[i, best][: K - 1 - best]  # the winner's states are the new path
        # a candidate after `best` now gets another input; one before it keeps its states up to block best - 1
        trails = {(i, b): states[: best - b] for (i, b), states in trails.items() if b < best}
    sequence += [b for b in range(K) if not chosen >> b & 1]
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


def optimal(
    family: Family, calibration: torch.Tensor, batch_size: int = 8, progress: bool = True, stride: int = 1
) -> Order:
    """The order minimising the calibration KL summed over all sizes: subset_kl for all 2^K sets + shortest_path."""
    sequence = shortest_path(subset_kl(family, calibration, None, batch_size, progress, stride))
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


def search_config(family: Family) -> SearchConfig:
    """The SearchConfig a family's named searched orders use: `family.search_config` when set (the sweep and the
    pipeline set their profile's), else the one recorded with an order saved next to the student, else the default."""
    given = getattr(family, "search_config", None)
    if given is not None:
        return given
    folder = _student_dir(family)
    for name in SEARCHES:
        saved = folder / f"order_{name}.json" if folder else None
        if saved and saved.exists():
            recorded = json.loads(saved.read_text()).get("search")
            if recorded:
                return SearchConfig(**recorded)
    return SearchConfig()


def search(
    family: Family,
    name: str,
    calibration: torch.Tensor | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    *,
    config: SearchConfig | None = None,
) -> Order:
    """The `name` order ("klpatch" or "optimal") of this family, cached in the family and next to the student.

    `config` (default: `search_config(family)`) gives the calibration windows, the stride, the autocast dtype and the
    batch size; `calibration` and `batch_size`, when given, replace its windows and batch size. A saved
    `order_<name>.json` in the student's directory (one with a boomerang plan) is reused when it was searched on the
    same calibration ids, settings, plan and weights; otherwise the order is searched and saved there, with its
    settings and the search's seconds.
    """
    if name not in SEARCHES:
        raise ValueError(f"Unknown searched order {name!r}; use one of {sorted(SEARCHES)}.")
    config = config or search_config(family)
    if batch_size is not None:
        config = dataclasses.replace(config, batch_size=batch_size)
    if calibration is None:
        tokenizer = teacher_tokenizer(
            family, f"The {name} search's calibration set", f"search(family, {name!r}, calibration_set(tokenizer))"
        )
        calibration = config.calibration(tokenizer)
    key = _fingerprint(family, calibration, config)
    path = _student_dir(family)
    path = path / f"order_{name}.json" if path else None
    if path and path.exists() and json.loads(path.read_text()).get("fingerprint") == key:
        order = Order.load(path)
    else:
        start = time.perf_counter()
        autocast = autocast_for(config.autocast, family.teacher.device, f"the {name} search")
        with torch.autocast(family.teacher.device.type, dtype=_dtype(autocast), enabled=bool(autocast)):
            order = SEARCHES[name](family, calibration, config.batch_size, progress, stride=config.stride)
        seconds = round(time.perf_counter() - start, 1)
        if path:
            record = {**order.to_dict(), "search": dataclasses.asdict(config), "seconds": seconds, "fingerprint": key}
            atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    family._orders[name] = order
    return order


def _dtype(name: str | None) -> torch.dtype | None:
    return getattr(torch, name) if name else None


def _student_dir(family: Family) -> Path | None:
    """The student's saved directory if it is a boomerang student of this plan, else None."""
    path = Path(family.student.name_or_path or "")
    if path.name and (path / PLAN_FILE).exists() and LayerPlan.load(path) == family.plan:
        return path
    return None


@torch.no_grad()
def _fingerprint(family: Family, calibration: torch.Tensor, config: SearchConfig) -> str:
    """A hash of the calibration ids, the search settings (stride, autocast, batch size), the plan, the dtype and a
    checksum of the teacher's and student's weights."""
    sums = [
        torch.stack([p.double().sum() for p in m.parameters()]).sum().item() for m in (family.teacher, family.student)
    ]
    parts = [
        calibration.cpu().numpy().tobytes(),
        str(tuple(calibration.shape)).encode(),
        repr(family.plan).encode(),
        str(family.teacher.dtype).encode(),
        f"stride={config.stride} autocast={config.autocast} batch={config.batch_size}".encode(),
        f"{sums[0]:.8e} {sums[1]:.8e}".encode(),
    ]
    return hashlib.sha256(b"|".join(parts)).hexdigest()


def klpatch_order(family: Family) -> Order:
    """The "klpatch" order: greedy calibration-KL patching, searched once per family (see `search`)."""
    return search(family, "klpatch")


def optimal_order(family: Family) -> Order:
    """The "optimal" order: the patch sets of least summed calibration KL, searched once per family (see `search`)."""
    return search(family, "optimal")


LOCAL_CALIBRATION = {"num_sequences": 8, "seq_len": 256, "seed": 1}
"""Calibration for the "local" order: 8 windows of 256 training-corpus tokens (seed 1: not the windows ShortGPT's
block influence is measured on); a few seconds on a CPU for SmolLM2-135M."""


def local_order(family, calibration: Tensor | None = None, batch_size: int = 8):
    """The "local" patch order: the blocks whose student layer stands in worst for its teacher block, measured in
    the teacher's context (the local stage's nmse on calibration text), are patched first; so at every size the
    student layers that remain are the ones that fit their blocks best. One teacher pass and one pass of each
    multi-layer student layer over the calibration text, against K(K+1)/2 member passes for klpatch."""
    if calibration is None:
        calibration = _local_calibration(family)
    errors = block_errors(family.teacher, family.student, family.plan, calibration, batch_size)
    return Order.from_blocks(family.plan, sorted(errors, key=lambda j: (-errors[j], j)), name="local")


def _local_calibration(family) -> Tensor:
    tokenizer = teacher_tokenizer(
        family, "The local order's calibration", "local_order(family, calibration_set(tokenizer))"
    )
    return calibration_set(tokenizer, **LOCAL_CALIBRATION)
