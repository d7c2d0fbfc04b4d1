"""Plots written as PNG: search Pareto fronts, AutoSlim trajectories."""
from .pareto import plot_pareto
from .trajectory import plot_trajectory

__all__ = ['plot_pareto', 'plot_trajectory']
