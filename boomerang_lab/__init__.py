"""boomerang_lab: boomerang distillation — plan → student → distill → family → evaluate → plot."""

from .distill import local  # its register_order call adds "local"
from .family import search  # its register_order calls add "klpatch" and "optimal"
from .family.members import Family, register_order
from .family.orders import Order
from .models.adapters import ADAPTERS, get_adapter
from .models.loading import load_model
from .models.plan import LayerPlan
from .models.student import init_student
from .report.curves import curve_quality
from .report.explore import explore

__all__ = [
    "ADAPTERS",
    "Family",
    "LayerPlan",
    "Order",
    "local",
    "curve_quality",
    "explore",
    "get_adapter",
    "init_student",
    "load_model",
    "search",
    "register_order",
]
