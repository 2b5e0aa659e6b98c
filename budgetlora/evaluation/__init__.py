"""Evaluation: logits and metrics (`metrics`), prediction files (`predict`), the run report
(`report`, `plots`) and runs side by side (`compare`)."""
