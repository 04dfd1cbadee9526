"""The held-out splits the example weights were scored on, shared by trainer and tests.

Needs scikit-learn (the ``dev`` extra), imported lazily: serving never needs it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

SPLIT_SEED = 0
TEST_FRACTION = 0.25


class Split(NamedTuple):
    x_train: npt.NDArray[np.float32]
    x_test: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.float32] | npt.NDArray[np.int64]
    y_test: npt.NDArray[np.float32] | npt.NDArray[np.int64]


def digits_split() -> Split:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x, y = data.data.astype(np.float32), data.target.astype(np.int64)
    return Split(
        *train_test_split(x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y)
    )


def diabetes_split() -> Split:
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    data = load_diabetes()
    x, y = data.data.astype(np.float32), data.target.astype(np.float32)
    return Split(*train_test_split(x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED))
