"""Vision: datasets (shared with generative models), classification and detection.

Importing the package registers its recipes (``cnn-digits``, ...).
"""

from fovea.vision import classify, data, detect, knn, linear  # noqa: F401
