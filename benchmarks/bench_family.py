"""Build every member of SmolLM2's family (both orders): time and memory, against the paper's deep-copy way.

python benchmarks/bench_family.py [--teacher smollm2-135m]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from boomerang_lab import Family, LayerPlan, init_student, load_model
from boomerang_lab.models.adapters import layers_of


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher", default="smollm2-135m")
    args = parser.parse_args()
    teacher, _ = load_model(args.teacher)
    plan = LayerPlan.paper(len(layers_of(teacher)))
    student = init_student(teacher, plan)
    x = torch.randint(0, teacher.config.vocab_size, (1, 16))

    family = Family(teacher, student, plan)
    rss0, t0 = rss_mib(), time.perf_counter()
    members = [family.build(k, order) for order in ("last", "first") for k in range(family.K + 1)]
    build_s, rss1 = time.perf_counter() - t0, rss_mib()
    storages = {p.untyped_storage().data_ptr() for m in members for p in m.parameters()}
    base = {p.untyped_storage().data_ptr() for m in (teacher, student) for p in m.parameters()}
    print(
        f"zero-copy: built {len(members)} members in {build_s * 1e3:.1f} ms "
        f"({build_s / len(members) * 1e3:.2f} ms each), RSS +{rss1 - rss0:.1f} MiB, "
        f"new weight storages: {len(storages - base)}"
    )

    t0 = time.perf_counter()
    with torch.no_grad():
        for m in members[:3]:
            m(x)
    print(f"first forward of 3 members: {(time.perf_counter() - t0) * 1e3:.1f} ms")

    # The paper's scripts: deep-copy the student, then deep-copy the teacher layers into it, per size.
    rss0, t0 = rss_mib(), time.perf_counter()
    for k in range(1, 4):
        m = copy.deepcopy(student)
        patched = family.order("last").patched(k)
        m.model.layers = torch.nn.ModuleList(
            [
                copy.deepcopy(l)
                for j in range(plan.num_student_layers)
                for l in ([layers_of(teacher)[i] for i in plan.block(j)] if j in patched else [layers_of(student)[j]])
            ]
        )
        del m
    copy_s = (time.perf_counter() - t0) / 3
    print(
        f"deep-copy way: {copy_s * 1e3:.0f} ms per member; zero-copy is {copy_s / (build_s / len(members)):.0f}x faster"
    )


if __name__ == "__main__":
    main()
