"""daat.pipeline (installed from ./pipeline)."""
