"""The multitask network's classification tasks and their classes: names only.

A vocabulary shared by the labels (:mod:`gliomatch.learn.labels`, which computes them) and the
training settings (:mod:`gliomatch.learn.config`, which names task sets); it imports nothing, so
reading it is free.
"""

__all__ = ["REGIONS", "TASKS", "TASK_SETS"]

REGIONS = ("frontal", "parietal", "occipital", "temporal", "deep", "infratentorial")

TASKS: dict[str, tuple[str, ...]] = {
    "hemisphere": ("left", "right"),
    "frontrear": ("rear", "front"),
    "upperlower": ("lower", "upper"),
    "region": REGIONS,
    "size": ("small", "medium", "large"),
    "infiltration": ("compact", "intermediate", "diffuse"),
    "growth": ("early", "intermediate", "late"),
}

#: Named task sets for ``gliomatch train multitask --tasks``.
TASK_SETS: dict[str, tuple[str, ...]] = {
    "all": tuple(TASKS),
    "seg": (),
    "location": ("hemisphere", "frontrear", "upperlower", "region"),
    "regime": ("infiltration", "growth"),
}
