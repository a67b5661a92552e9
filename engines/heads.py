"""The student's output heads, named once for training, export and serving.

Torch-free, so the runtime (engines.runtime) can name the rows of a bundle's
output without importing the architecture in engines.student.
"""

MODALITIES = ("text", "audio", "video")  # one peer branch and head each
HEADS = ("fusion",) + MODALITIES  # axis 1 of the student's logits
