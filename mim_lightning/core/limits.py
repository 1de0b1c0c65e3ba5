"""Limits shared by the config and the theory computations (no heavy imports: the config reads them)."""

MAX_R = 32  # r <= MAX_R: the theory computations stay bounded in time and memory (the Hermite
#             expansion up to degree 2 in 32 variables has 561 terms)
