"""boomerang_lab: boomerang distillation — plan → student → distill → family → evaluate → plot."""
from .adapters import ADAPTERS, get_adapter
from .family import Family
from .models import load_model
from .orders import Order
from .plan import LayerPlan
from .student import init_student

__all__ = ["ADAPTERS", "Family", "LayerPlan", "Order", "get_adapter", "init_student", "load_model"]
