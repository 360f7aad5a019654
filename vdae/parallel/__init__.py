"""Devices and processes: the mesh and parameter layout, multi-host start-up."""
