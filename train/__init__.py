"""daat.train (installed from ./train)."""
