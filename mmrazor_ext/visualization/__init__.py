"""Plots written as PNG: search Pareto fronts, AutoSlim trajectories,
compression-recipe bar charts."""
from .pareto import plot_pareto
from .recipe import plot_recipe
from .trajectory import plot_trajectory

__all__ = ['plot_pareto', 'plot_recipe', 'plot_trajectory']
