"""boomerang_lab: boomerang distillation — plan → student → distill → family → evaluate → plot."""

from . import blockwise, patch_search  # their register_order calls add "local", "klpatch" and "optimal"
from .adapters import ADAPTERS, get_adapter
from .curves import curve_quality
from .explore import explore
from .family import Family, register_order
from .models import load_model
from .orders import Order
from .plan import LayerPlan
from .student import init_student

__all__ = [
    "ADAPTERS",
    "Family",
    "LayerPlan",
    "Order",
    "blockwise",
    "curve_quality",
    "explore",
    "get_adapter",
    "init_student",
    "load_model",
    "patch_search",
    "register_order",
]
