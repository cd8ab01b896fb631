"""Figures: the house style, image grids and the model-graph drawing, under a run's plots and the report."""
