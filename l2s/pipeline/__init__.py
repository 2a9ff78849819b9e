"""Ray wrappers around the per-clip functions: stage objects and the graphs that chain them."""
