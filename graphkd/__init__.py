"""graphkd: graph-representation knowledge distillation on a sparse graph-loss core."""
__version__ = "0.1.0"
