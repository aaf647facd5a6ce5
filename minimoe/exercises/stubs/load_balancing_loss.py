"""Exercise: the load-balancing loss (Switch Transformer).   Grade: minimoe grade load_balancing_loss.py

Shape legend: N tokens, E experts, K top-k.

    f_e = (number of tokens that chose expert e among their K) / N      sums to K over e
    P_e = mean over the N tokens of probs[:, e]                         sums to 1 over e
    aux = E * sum_e f_e * P_e

Graded against minimoe.train.losses and two hand cases: even routing gives exactly K, and every
token sending its K = 2 choices to experts 0 and 1 with probability 1/2 each gives E.
"""
import numpy as np

EXERCISE = "load_balancing_loss"


def load_balancing_loss(probs: np.ndarray, experts: np.ndarray) -> float:
    """probs (N, E) router probabilities, experts (N, K) int chosen experts -> aux (a float)."""
    raise NotImplementedError("write the load-balancing loss")
