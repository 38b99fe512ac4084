"""recsys: ranking distillation for recommenders on the graphkd core."""
