"""Training: Nero and Minnorm optimisers, ghost batch norm, large-batch schedules, the paper's
networks, losses and targets, full-batch and minibatch trainers, one margin-sweep ensemble unit,
label noise and the distance from initialisation."""
