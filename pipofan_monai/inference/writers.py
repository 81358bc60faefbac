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

"""Writers of the inference outputs."""

from __future__ import annotations

from typing import Any

import numpy as np
from monai.data import NibabelWriter

__all__ = ["LabelNiftiWriter"]


class LabelNiftiWriter(NibabelWriter):
    """``monai.data.NibabelWriter`` that keeps the volume's spatial dimensions for single-channel data.

    MONAI's writers squeeze trailing singleton dimensions, so a one-slice volume ``(1, H, W, 1)`` would be
    written as a 2D ``(H, W)`` NIfTI; this writer writes ``(H, W, 1)``, the input's exact shape. Use it with
    ``SaveImaged(writer=LabelNiftiWriter, ...)``. Multi-channel data are written as MONAI does (channel last).
    """

    def set_data_array(self, data_array: Any, channel_dim: int | None = 0, squeeze_end_dims: bool = True, **kwargs):
        """Args: as ``NibabelWriter.set_data_array``; shape ``(1, H, W, D)`` is written as ``(H, W, D)``."""
        super().set_data_array(data_array, channel_dim=channel_dim, squeeze_end_dims=squeeze_end_dims, **kwargs)
        shape = list(data_array.shape)
        if channel_dim is not None:
            cdim = int(channel_dim) % len(shape)
            if shape[cdim] != 1:
                return
            shape.pop(cdim)
        spatial = shape[:3]
        if self.data_obj is not None and len(self.data_obj.shape) < len(spatial):
            if int(np.prod(spatial)) == int(np.prod(self.data_obj.shape)):
                self.data_obj = self.data_obj.reshape(spatial)
