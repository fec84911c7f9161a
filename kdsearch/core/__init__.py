"""The vocabulary every stage shares: errors, the registry type, file I/O and caches, versions, devices, the label
rule, metric names and trial outcomes. Imports nothing of kdsearch outside core/."""
