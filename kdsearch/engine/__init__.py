"""The training loop in plain PyTorch (train an epoch, evaluate, recalibrate BatchNorm) and its mini-batches: no Ray,
no MLflow, no pipeline."""
