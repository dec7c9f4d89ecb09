"""Architectural efficiency: MPO decomposition and depth scaling (installed as ``plmkit.compress``)."""
