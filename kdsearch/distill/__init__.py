"""One student distilled: the once-per-command preparation, the Distiller (an epoch at a time), and `kdsearch train`."""
