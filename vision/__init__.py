"""Vision: datasets (shared with generative models), classification and, later, detection.

Importing the package registers its recipes (``cnn-digits``, ...).
"""

from vision import classify, data, knn, linear  # noqa: F401
