# Copyright (c) pipofan-monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""The authors' learning-rate schedule as a picklable ``LambdaLR`` factor."""

from __future__ import annotations

__all__ = ["AuthorsLRLambda"]


class AuthorsLRLambda:
    """Learning-rate factor of the authors' schedule for ``LambdaLR``: ``gamma ** (epoch // step + 1)``, i.e.
    x0.99 every 40 epochs including at epoch 0 (the authors' training script; the bundle's ``lr_decay_epochs`` and
    ``lr_decay``). A class, not a lambda, so it pickles.

    Args:
        step: epochs between decays (40).
        gamma: factor per decay (0.99).
    """

    def __init__(self, step: int = 40, gamma: float = 0.99):
        if step < 1 or not 0 < gamma <= 1:
            raise ValueError(f"need step >= 1 and 0 < gamma <= 1, got step={step}, gamma={gamma}.")
        self.step = int(step)
        self.gamma = float(gamma)

    def __call__(self, epoch: int) -> float:
        return self.gamma ** (epoch // self.step + 1)
