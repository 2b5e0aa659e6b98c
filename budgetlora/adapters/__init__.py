"""Adapters: the budgeted model. A PEFT method (`methods`) on an encoder with a classification
head (`model`), counted exactly (`budget`) and fitted to the budget (`planner`)."""
