"""PyTorch side of rewas-rt: model definitions, checkpoint import, trainers."""
