"""boomerang_lab: boomerang distillation — plan → student → distill → family → evaluate → plot.

The public API, imported on first use (`import boomerang_lab.config` stays light: no torch, no trainer)."""

import importlib

_API = {
    "ADAPTERS": "models.adapters",
    "Family": "family.members",
    "LayerPlan": "models.plan",
    "Order": "models.orders",
    "curve_quality": "report.curves",
    "explore": "report.explore",
    "get_adapter": "models.adapters",
    "init_student": "models.student",
    "load_model": "models.loading",
    "register_order": "family.members",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'boomerang_lab' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
