"""The photographs bundled with scikit-image and scikit-learn (no download), split once.

Evaluation uses four PNG-sourced photos (no JPEG artefacts to flatter or punish a codec):
astronaut, coffee, chelsea and motorcycle (the left view). Training never sees them, nor the
right view of the motorcycle stereo pair (the same scene); it takes patches of the others,
grayscale ones replicated to RGB.
"""

from __future__ import annotations

import numpy as np

EVALUATION = ("astronaut", "coffee", "chelsea", "motorcycle_left")
TRAINING = ("china", "flower", "rocket", "immunohistochemistry", "hubble_deep_field", "retina", "camera", "brick", "grass", "gravel", "moon", "coins")


def load_photo(name: str) -> np.ndarray:
    """uint8 pixels (H, W) or (H, W, 3) of a bundled photo."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    import skimage.data

    if name == "motorcycle_left":
        return skimage.data.stereo_motorcycle()[0]
    loader = getattr(skimage.data, name, None)
    if loader is None:
        raise ValueError(f"no bundled photo named {name!r}; choose from {EVALUATION + TRAINING}")
    return np.asarray(loader(), dtype=np.uint8)


def load_photos(names: tuple[str, ...] | list[str]) -> dict[str, np.ndarray]:
    return {name: load_photo(name) for name in names}
