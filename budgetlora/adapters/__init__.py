"""Adapters: the budgeted model. A PEFT method (`methods`, one `registry` entry each) on an encoder
with a classification head (`model`), counted exactly (`budget`) and fitted to the budget (`planner`)."""

from . import methods  # noqa: F401 -- registers the built-in methods, so every lookup finds them
