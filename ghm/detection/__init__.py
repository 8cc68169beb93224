"""The detector and its training: RetinaNet with pluggable losses, backbones, the training loop, checkpoints, evaluation."""
