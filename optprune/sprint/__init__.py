"""SPRINT: per-question attention-head pruning for diverse best-of-N, with the N
configurations chosen jointly (accurate and diverse) by an exact small solve.

task.py       chained modular arithmetic (graded difficulty, checkable answers)
model.py      a decoder-only transformer with inference-time head masks
configs.py    head configurations: ids, masks, costs
selector.py   InfoNCE question/configuration embeddings, alignment, predicted accuracy
subset.py     the subset-selection MILP (HiGHS via optprune.solve) and CP-SAT model
experiment.py best-of-N with majority vote: SPRINT vs dense sampling vs random heads
"""
