"""Training: the recipe (`loop`), its learning-rate schedules, distillation and tracking, and
sweeps of several runs."""
