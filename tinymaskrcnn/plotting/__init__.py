"""Figures for the tutorials and the command line, one module per subject."""
