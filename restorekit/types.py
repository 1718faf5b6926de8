"""Leaf types shared by every layer (nothing in restorekit is imported here)."""

from __future__ import annotations

import numpy as np

Image = np.ndarray
"""float32 RGB, shape (H, W, 3), values in [0, 1]."""

API_VERSION = 1
"""Bumped when the plugin-facing API changes incompatibly."""
