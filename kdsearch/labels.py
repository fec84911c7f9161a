"""What a label means, shared by the data (which makes labels) and the losses (which read them)."""

UNLABELED = -1
"""The label of a transfer image (data.label_budget's remainder, data.unlabeled): the teacher is its only signal."""
