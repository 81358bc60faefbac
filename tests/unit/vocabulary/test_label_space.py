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

"""The label space: one object, created once, read by every consumer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from pipofan_monai.plans import DEFAULT_PREPROCESSING, make_plans
from pipofan_monai.postprocessing import KeepLargestOrganComponentsd
from pipofan_monai.preprocessing import MapDatasetLabelsd
from pipofan_monai.vocabulary import LabelSpace

FIVE = ["background", "liver", "kidney", "spleen", "stomach"]
MY_TABLE = {"my_ct": {"labels": {1: "liver", 2: "stomach"}, "annotates": ["liver", "stomach"]}}


def test_default_space_resolves_the_paper_datasets():
    space = LabelSpace.create()
    assert space.class_names == ("background", "liver", "kidney", "spleen")
    assert space.num_classes == 4
    label_map, labeled = space.resolve("btcv")
    # BTCV: 1 spleen, 2 right kidney, 3 left kidney, 6 liver; every other organ becomes background
    assert labeled == (1, 2, 3)
    assert {v: label_map[v] for v in (0, 1, 2, 3, 6, 7, 11)} == {0: 0, 1: 3, 2: 2, 3: 2, 6: 1, 7: 0, 11: 0}
    np.testing.assert_array_equal(space.labeled_mask("lits"), [1, 1, 0, 0])
    np.testing.assert_array_equal(space.labeled_mask("kits19"), [1, 0, 1, 0])
    np.testing.assert_array_equal(space.labeled_mask(None), [1, 1, 1, 1])
    assert space.num_components == {1: 1, 2: 2, 3: 1}
    assert space.metric_names == ("val_dice_liver", "val_dice_kidney", "val_dice_spleen")
    assert space.class_ids(["Spleen", "kidneys"]) == (3, 2)


def test_space_is_immutable_and_round_trips_through_plans():
    space = LabelSpace.create(FIVE, organ_table={"stomach": {"num_components": 2}}, dataset_table=MY_TABLE)
    with pytest.raises(AttributeError):
        space.class_names = ("background", "liver")  # type: ignore[misc]
    with pytest.raises(TypeError):
        space.dataset_config["other"] = {}  # type: ignore[index]
    assert space.num_components == {1: 1, 2: 2, 3: 1, 4: 2}
    assert space.resolve("my_ct") == ({0: 0, 1: 1, 2: 4}, (1, 4))
    net_args = {"spatial_dims": 2, "in_channels": 3, "out_channels": 5, "channels": [8, 16, 32, 64, 64]}
    plans = make_plans(net_args, space, DEFAULT_PREPROCESSING)
    assert plans["organ_table"] == {"stomach": {"num_components": 2}}
    again = LabelSpace.from_plans(plans)
    assert again == space
    assert again.resolve("my_ct") == space.resolve("my_ct")
    assert again.num_components[4] == 2


def test_bad_entries_fail_when_the_space_is_created():
    with pytest.raises(ValueError, match="unknown organs"):
        LabelSpace.create(["background", "liver", "pancreatic_duct"])
    with pytest.raises(ValueError, match="names unknown organs"):
        LabelSpace.create(FIVE, dataset_table={"bad": {"labels": {1: "tumour_x"}}})
    with pytest.raises(ValueError, match="are not organs of this model"):
        LabelSpace.create().class_ids(["liver", "stomach"])


def test_consumers_take_the_space_and_refuse_a_second_vocabulary():
    space = LabelSpace.create(FIVE, dataset_table=MY_TABLE)
    label = MetaTensor(torch.tensor([[[[0, 1, 2, 2]]]], dtype=torch.uint8))
    out = MapDatasetLabelsd("label", label_space=space)({"label": label, "dataset": "my_ct"})
    assert out["label"].flatten().tolist() == [0, 1, 4, 4]
    assert out["label"].meta["labeled_mask"].tolist() == [1, 1, 0, 0, 1]
    with pytest.raises(ValueError, match="either label_space"):
        MapDatasetLabelsd("label", label_space=space, class_names=["background", "liver"])
    # the naive baseline is the training pipeline's choice; the space keeps the true masks for validation
    out = MapDatasetLabelsd("label", label_space=space, partial_labels=False)({"label": label, "dataset": "my_ct"})
    assert out["label"].meta["labeled_mask"].tolist() == [1, 1, 1, 1, 1]
    assert out["label"].flatten().tolist() == [0, 1, 4, 4]
    # post-processing reads the organs' component rules from the same object
    pred = torch.zeros(1, 5, 5, 1, dtype=torch.int64)
    pred[0, 0, 0, 0] = pred[0, 4, 4, 0] = 4  # two stomach pieces
    pred[0, 0, 4, 0] = pred[0, 4, 0, 0] = 2  # two kidney pieces
    kept = KeepLargestOrganComponentsd("pred", label_space=space)({"pred": pred})["pred"]
    assert int((kept == 4).sum()) == 1 and int((kept == 2).sum()) == 2
    with pytest.raises(ValueError, match="not both"):
        KeepLargestOrganComponentsd("pred", num_components={1: 1}, label_space=space)


def test_placeholder_names_only_when_not_strict():
    with pytest.raises(ValueError, match="unknown organs"):
        LabelSpace.create(["background", "liver", "class2"])
    space = LabelSpace.create(["background", "Liver", "class2"], strict=False)
    assert space.class_names == ("background", "liver", "class2") and space.placeholders == ("class2",)
    assert not space.named and LabelSpace.create(FIVE).named
    assert space.num_components == {1: 1}  # the placeholder gets no rule (left untouched)
    assert set(space.colors) == {1}  # nor a colour
    with pytest.raises(ValueError, match="background"):  # the other rules still hold
        LabelSpace.create(["class1", "background"], strict=False)


def test_from_plans_prefers_the_checkpoint_tables():
    other = {"other_ct": {"labels": {1: "liver"}, "annotates": ["liver"]}}
    plans = {"class_names": FIVE, "dataset_table": MY_TABLE, "organ_table": None, "partial_labels": False}
    space = LabelSpace.from_plans(plans, dataset_table=other)
    assert set(space.dataset_config) == {"my_ct"} and space.partial_labels is False
    space = LabelSpace.from_plans({"class_names": FIVE}, dataset_table=other)  # plans without a table
    assert set(space.dataset_config) == {"other_ct"}
    assert space.labeled_mask("other_ct").tolist() == [1, 1, 0, 0, 0]


def test_training_metric_and_split_read_the_space(caplog):
    from pipofan_monai.apps.training import split_training_data
    from pipofan_monai.evaluation import PartialDiceMetric, per_class_dice_metrics

    space = LabelSpace.create(FIVE)
    assert PartialDiceMetric(label_space=space).class_names == tuple(FIVE)
    assert list(per_class_dice_metrics(space)) == ["val_dice_liver", "val_dice_kidney", "val_dice_spleen",
                                                   "val_dice_stomach"]
    with pytest.raises(ValueError, match="not both"):
        PartialDiceMetric(class_names=FIVE, label_space=space)
    items = [{"image": f"/x/ct{i}.nii.gz", "label": f"/x/seg{i}.nii.gz", "dataset": "lits", "fold": i % 2}
             for i in range(4)]
    with caplog.at_level("WARNING"):
        train, val = split_training_data({"training": items, "num_folds": 2}, fold=0, num_folds=2,
                                         label_space=space)
    assert len(train) == len(val) == 2
    never = [r.getMessage() for r in caplog.records if "annotated by none" in r.getMessage()]
    assert [m.split("'")[1] for m in never] == ["kidney", "spleen", "stomach"]  # LiTS labels the liver only


def test_training_pipeline_follows_the_space_partial_labels():
    from pipofan_monai.preprocessing.train_transforms import get_train_transforms

    def mapper(space):
        t = get_train_transforms(roi_size=16, label_space=space)
        return next(x for x in t.transforms if isinstance(x, MapDatasetLabelsd))

    assert mapper(LabelSpace.create(FIVE)).partial_labels is True
    assert mapper(LabelSpace.create(FIVE, partial_labels=False)).partial_labels is False


def test_space_pickles_by_value():
    """The cache's worker processes receive the label space."""
    import pickle

    space = LabelSpace.create(FIVE, dataset_table=MY_TABLE, partial_labels=False)
    _ = space.organs  # a cached table is not part of the state
    back = pickle.loads(pickle.dumps(space))
    assert back == space and back.partial_labels is False and back.labeled_mask("my_ct").tolist() == [1, 1, 0, 0, 1]
    loose = LabelSpace.create(["background", "class1"], strict=False)
    assert pickle.loads(pickle.dumps(loose)).placeholders == ("class1",)
