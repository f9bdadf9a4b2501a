"""Native kernels called from XLA (see cpu.py)."""
