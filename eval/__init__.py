"""daat.eval (installed from ./eval)."""
