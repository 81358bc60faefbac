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

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.networks import eval_mode

from pipofan_monai.networks import PIPOFAN, AdaptiveFusion, convert_original_state_dict, pipofan_from_original

TINY = (8, 16, 32, 64, 64)


def count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# [constructor kwargs, legacy count (None = not in the table), clean count]  (the counts of the paper's tables
# and of the authors' code; README section "The network")
PARAM_CASES = [
    [{"out_channels": 2, "adaptive_fusion": False}, 28_270_986, 27_907_082],
    [{"out_channels": 2}, 28_271_005, 27_907_101],
    [{"out_channels": 4, "adaptive_fusion": False}, 28_271_636, 27_907_732],
    [{"out_channels": 4}, 28_271_661, 27_907_757],
    [{"out_channels": 2, "num_scales_out": 3, "adaptive_fusion": False}, 25_016_966, 24_661_638],
    [{"out_channels": 2, "num_scales_out": 1, "adaptive_fusion": False}, 24_740_034, 24_393_282],
    [{"out_channels": 2, "block": "conv", "adaptive_fusion": False}, None, 26_574_922],
]


@pytest.mark.parametrize("kwargs,legacy,clean", PARAM_CASES)
def test_parameter_counts(kwargs, legacy, clean):
    with torch.device("meta"):
        assert count(PIPOFAN(**kwargs)) == clean
        if legacy is not None:
            assert count(PIPOFAN(legacy_projections=True, **kwargs)) == legacy


@pytest.mark.parametrize("k,n", [(2, 19), (4, 25)])
def test_fusion_module_count(k, n):
    assert count(AdaptiveFusion(2, k, "relu", "batch")) == n


def test_default_is_multi_organ_pipofan():
    with torch.device("meta"):
        assert count(PIPOFAN()) == 27_907_757


@pytest.mark.parametrize("size", [(224, 224), (256, 256), (512, 512), (256, 240)])
def test_eval_output_shape_full_width(size):
    net = PIPOFAN()
    with eval_mode(net), torch.no_grad():
        out = net(torch.randn(1, 3, *size))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, 4, *size) and out.dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs,n_train",
    [
        ({}, 6),
        ({"adaptive_fusion": False}, 5),
        ({"num_scales_out": 3}, 4),
        ({"num_scales_in": 1, "num_scales_out": 1, "adaptive_fusion": False}, 1),
        ({"ecd": False}, 6),
        ({"fuse_mode": "sum"}, 6),
        ({"block": "conv", "num_scales_in": 3}, 6),
    ],
)
def test_train_and_eval_outputs(kwargs, n_train):
    net = PIPOFAN(out_channels=3, channels=TINY, **kwargs)
    x = torch.randn(2, 3, 48, 32)
    net.train()
    outs = net(x)
    assert isinstance(outs, list) and len(outs) == n_train
    assert all(o.shape == (2, 3, 48, 32) for o in outs)
    with eval_mode(net), torch.no_grad():
        out = net(x)
    assert out.shape == (2, 3, 48, 32)


def test_eval_output_is_the_fused_output():
    torch.manual_seed(0)
    net = PIPOFAN(channels=TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fused = net(x)
        net.train()  # train-mode code path, batch norm kept on its running statistics
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
        all_outs = net(x)
        w = net.fusion.weights(all_outs[1:])
    np.testing.assert_allclose(fused.numpy(), all_outs[0].numpy(), rtol=1e-5, atol=1e-6)
    assert w.shape == (2, 5)
    np.testing.assert_allclose(w.sum(1).numpy(), np.ones(2), rtol=1e-6)
    manual = sum(w[:, i, None, None, None] * all_outs[1 + i] for i in range(5))
    np.testing.assert_allclose(fused.numpy(), manual.numpy(), rtol=1e-5, atol=1e-6)


def test_eval_output_without_fusion_is_finest():
    torch.manual_seed(0)
    net = PIPOFAN(channels=TINY, adaptive_fusion=False).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = net(x)
        net.train()
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
        outs = net(x)
    torch.testing.assert_close(out, outs[0])


def test_fusion_pooling_is_global():
    # Fixed weights (not the random init, which can map the whole patch to zero through a ReLU): every layer passes
    # a positive value through, so the score is known in closed form. A patch that lies outside any 224x224 window
    # at the top left must still change the score: the pooling covers the whole map.
    fusion = AdaptiveFusion(2, 2, "relu", "batch").eval()
    with torch.no_grad():
        fusion.conv1.weight.fill_(1.0)
        fusion.conv1.bias.zero_()
        fusion.conv2.weight.fill_(1.0)
        fusion.conv2.bias.zero_()
    a = torch.zeros(1, 2, 256, 256)
    b = a.clone()
    b[..., 250:, 250:] = 50.0  # a 6x6 patch in the bottom-right corner
    sa, sb = fusion.score(a), fusion.score(b)
    assert sa.item() == 0.0
    s2 = 1.0 + fusion.norm1.eps  # each eval-mode batch norm divides by sqrt(1 + eps); two of them in a row
    value = 2 * 50.0 / s2  # conv1 sums the two channels
    # conv2 (3x3 ones, zero padding): the max is 9 * value inside the patch; each patch pixel is counted by 3 output
    # positions per axis, except the last row/column (2, the image ends): (5 * 3 + 2) ** 2 = 289 in all.
    expected = 9 * value + 289 * value / (256 * 256)
    assert sb.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("size", [(250, 250), (256, 250), (8, 24)])
def test_bad_size_raises(size):
    net = PIPOFAN(channels=TINY)
    with pytest.raises(ValueError, match="divisible by 16"):
        net(torch.randn(1, 3, *size))


def test_bad_input_dims_and_channels():
    net = PIPOFAN(channels=TINY)
    with pytest.raises(ValueError, match="spatial dims"):
        net(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="input channels"):
        net(torch.randn(1, 1, 32, 32))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"spatial_dims": 1},
        {"channels": (8, 16, 32)},
        {"num_scales_in": 0},
        {"num_scales_out": 6},
        {"block": "dense"},
        {"fuse_mode": "mul"},
        {"fuse_mode": "sum", "ecd": False},
        {"num_scales_out": 1, "adaptive_fusion": True},
    ],
)
def test_bad_options(kwargs):
    with pytest.raises(ValueError):
        PIPOFAN(**kwargs)


def test_3d_variant():
    net = PIPOFAN(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 8, 8, 8))
    with eval_mode(net), torch.no_grad():
        assert net(torch.randn(1, 1, 16, 16, 32)).shape == (1, 2, 16, 16, 32)


def test_legacy_projections_do_not_change_forward():
    torch.manual_seed(0)
    clean = PIPOFAN(channels=TINY).eval()
    legacy = PIPOFAN(channels=TINY, legacy_projections=True).eval()
    missing, unexpected = legacy.load_state_dict(clean.state_dict(), strict=False)
    assert not unexpected and all(".proj." in k for k in missing) and missing
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(legacy(x), clean(x))


def test_torchscript_round_trip():
    torch.manual_seed(0)
    net = PIPOFAN(channels=TINY).eval()
    x = torch.randn(2, 3, 64, 48)
    scripted = torch.jit.script(net)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x).numpy(), net(x).numpy(), atol=1e-5)
    with pytest.raises(Exception, match="divisible by 16"):
        loaded(torch.randn(1, 3, 50, 48))



# --------------------------------------------------------------------------------------------------------------
# The authors' checkpoint layout (README section "The authors' checkpoints"), built from the key map alone, with an independent functional
# forward pass of the authors' model written from §1 (not from our modules).


def _bn(sd, p, c, g):
    sd[p + ".weight"] = torch.rand(c, generator=g) + 0.5
    sd[p + ".bias"] = torch.randn(c, generator=g) * 0.1
    sd[p + ".running_mean"] = torch.randn(c, generator=g) * 0.1
    sd[p + ".running_var"] = torch.rand(c, generator=g) + 0.5
    sd[p + ".num_batches_tracked"] = torch.tensor(7)


def _conv(sd, p, a, b, k, g):
    sd[p + ".weight"] = torch.randn(b, a, k, k, generator=g) * (2.0 / (a * k * k)) ** 0.5
    sd[p + ".bias"] = torch.randn(b, generator=g) * 0.05


def _res(sd, name, a, b, role, g):
    _bn(sd, f"{name}.{role}.conv.0", a, g)
    _conv(sd, f"{name}.{role}.conv.2", a, b, 3, g)
    _bn(sd, f"{name}.{role}.conv.3", b, g)
    _conv(sd, f"{name}.{role}.conv.5", b, b, 3, g)
    _bn(sd, f"{name}.bridge.conv.0", a, g)  # the authors always build the bridge
    _conv(sd, f"{name}.bridge.conv.2", a, b, 1, g)


def authors_state_dict(c=TINY, k=4, in_ch=3, seed=0, fused=True):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    _conv(sd, "inc.conv.0", in_ch, c[0], 3, g)
    _bn(sd, "inc.conv.1", c[0], g)
    _conv(sd, "inc.conv.3", c[0], c[0], 3, g)
    for i, (a, b) in enumerate([(2 * c[0], c[1]), (2 * c[1], c[2]), (2 * c[2], c[3]), (2 * c[3], c[4])]):
        _res(sd, f"down{i + 1}", a, b, "mpconv", g)
    ecd = [(c[0], c[1]), (c[0], c[1]), (c[1], c[2]), (c[0], c[1]), (c[1], c[2]), (c[2], c[3])]
    for i, (a, b) in enumerate(ecd):
        _res(sd, f"dbconv{i + 1}", a, b, "mpconv", g)
    d = (c[0], c[0], c[1], c[2], c[4])
    for i, lvl in enumerate([4, 3, 2, 1]):
        _res(sd, f"up{i + 1}", c[lvl - 1] + d[lvl], d[lvl - 1], "conv", g)
    ups = [(d[4], d[3]), (d[3], d[2]), (d[2], d[1]), (d[1], d[0]), (d[3], d[2]), (d[2], d[1]), (d[1], d[0])]
    ups += [(d[2], d[1]), (d[1], d[0]), (d[1], d[0])]
    for i, (a, b) in enumerate(ups):
        _res(sd, f"dbup{i + 1}", a, b, "conv", g)
    for name in ["outc1", "outc2", "outc3", "outc4", "outc"]:
        _bn(sd, f"{name}.conv.0", d[0], g)
        _conv(sd, f"{name}.conv.2", d[0], k, 1, g)
    if not fused:
        return sd
    out = {"resnet." + key: v for key, v in sd.items()}
    _bn(out, "att.conv.0", k, g)
    _conv(out, "att.conv.2", k, 1, 1, g)
    _bn(out, "att.conv.3", 1, g)
    _conv(out, "att.conv.5", 1, 1, 3, g)
    return out


def authors_forward(sd, x):
    """Eval-mode fused logits of the authors' PIPO-FAN, straight from their key layout (§1)."""
    sd = {k.replace("module.", "", 1) if k.startswith("module.") else k: v for k, v in sd.items()}
    sd = {k[len("resnet.") :] if k.startswith("resnet.") else k: v for k, v in sd.items()}

    def bn(t, p):
        return F.batch_norm(t, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"])

    def conv(t, p):
        w = sd[p + ".weight"]
        return F.conv2d(t, w, sd[p + ".bias"], padding=w.shape[-1] // 2)

    def res(t, name, role):
        y = conv(F.relu(bn(t, f"{name}.{role}.conv.0")), f"{name}.{role}.conv.2")
        y = conv(F.relu(bn(y, f"{name}.{role}.conv.3")), f"{name}.{role}.conv.5")
        if t.shape[1] == y.shape[1]:
            return y + t
        return y + conv(F.relu(bn(t, f"{name}.bridge.conv.0")), f"{name}.bridge.conv.2")

    def stem(t):
        return conv(F.relu(bn(conv(t, "inc.conv.0"), "inc.conv.1")), "inc.conv.3")

    def up(t):
        return F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=True)

    inputs = [x]
    for _ in range(4):
        inputs.append(F.avg_pool2d(inputs[-1], 2))
    x1 = stem(x)
    z2 = stem(inputs[1])
    z3 = res(stem(inputs[2]), "dbconv1", "mpconv")
    z4 = res(res(stem(inputs[3]), "dbconv2", "mpconv"), "dbconv3", "mpconv")
    z5 = res(res(res(stem(inputs[4]), "dbconv4", "mpconv"), "dbconv5", "mpconv"), "dbconv6", "mpconv")
    x2 = res(torch.cat([F.max_pool2d(x1, 2), z2], 1), "down1", "mpconv")
    x3 = res(torch.cat([F.max_pool2d(x2, 2), z3], 1), "down2", "mpconv")
    x4 = res(torch.cat([F.max_pool2d(x3, 2), z4], 1), "down3", "mpconv")
    x5 = res(torch.cat([F.max_pool2d(x4, 2), z5], 1), "down4", "mpconv")
    u4 = res(torch.cat([x4, up(x5)], 1), "up1", "conv")
    u3 = res(torch.cat([x3, up(u4)], 1), "up2", "conv")
    u2 = res(torch.cat([x2, up(u3)], 1), "up3", "conv")
    u1 = res(torch.cat([x1, up(u2)], 1), "up4", "conv")

    def head(t, name):
        return conv(F.relu(bn(t, f"{name}.conv.0")), f"{name}.conv.2")

    def chain(t, names):
        for n in names:
            t = res(t, n, "conv")
        return t

    o5 = head(chain(x5, ["dbup1", "dbup2", "dbup3", "dbup4"]), "outc1")
    o4 = head(chain(u4, ["dbup5", "dbup6", "dbup7"]), "outc2")
    o3 = head(chain(u3, ["dbup8", "dbup9"]), "outc3")
    o2 = head(chain(u2, ["dbup10"]), "outc4")
    o1 = head(u1, "outc")
    outs = [up(up(up(up(o5)))), up(up(up(o4))), up(up(o3)), up(o2), o1]  # coarse -> fine, as the authors
    if "att.conv.0.weight" not in sd:
        return o1
    scores = []
    for o in outs:
        a = F.relu(bn(o, "att.conv.0"))
        a = F.relu(bn(conv(a, "att.conv.2"), "att.conv.3"))
        a = conv(a, "att.conv.5").flatten(1)
        scores.append(a.mean(1) + a.max(1).values)
    w = torch.softmax(torch.stack(scores, 1), 1)
    return sum(w[:, i, None, None, None] * outs[i] for i in range(5))


@pytest.mark.parametrize("prefix", ["", "module."])
def test_convert_authors_fused_checkpoint_reproduces_outputs(prefix):
    sd = {prefix + k: v for k, v in authors_state_dict().items()}
    converted, config = convert_original_state_dict(sd, return_config=True)
    assert config["channels"] == TINY and config["num_scales_in"] == 5 and config["adaptive_fusion"]
    net = PIPOFAN(legacy_projections=True, **config).eval()
    net.load_state_dict(converted, strict=True)
    torch.testing.assert_close(net.stem.conv1.weight, sd[prefix + "resnet.inc.conv.0.weight"])
    torch.testing.assert_close(net.encoder[3].ecd[2].conv.conv2.weight, sd[prefix + "resnet.dbconv6.mpconv.conv.5.weight"])
    torch.testing.assert_close(net.outputs[4].head.conv.weight, sd[prefix + "resnet.outc1.conv.2.weight"])
    torch.testing.assert_close(net.fusion.conv2.weight, sd[prefix + "att.conv.5.weight"])
    for size in [(32, 32), (64, 48)]:
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            np.testing.assert_allclose(net(x).numpy(), authors_forward(sd, x).numpy(), atol=1e-5, rtol=1e-5)


def test_convert_bare_pipo_checkpoint():
    sd = authors_state_dict(fused=False)
    net = pipofan_from_original(sd)
    assert not net.use_adaptive_fusion
    x = torch.randn(1, 3, 32, 32)
    with eval_mode(net), torch.no_grad():
        np.testing.assert_allclose(net(x).numpy(), authors_forward(sd, x).numpy(), atol=1e-5, rtol=1e-5)


def test_convert_transpose_kernels_gives_monai_layout():
    sd = authors_state_dict()
    plain = pipofan_from_original(sd).eval()
    transposed = pipofan_from_original(sd, transpose_kernels=True).eval()
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        expected = plain(x.transpose(-1, -2)).transpose(-1, -2)
        np.testing.assert_allclose(transposed(x).numpy(), expected.numpy(), atol=1e-5, rtol=1e-5)


def test_convert_full_size_counts():
    g = authors_state_dict(c=(64, 128, 256, 512, 512), k=4)
    converted, config = convert_original_state_dict(g, return_config=True)
    net = PIPOFAN(legacy_projections=True, **config)
    net.load_state_dict(converted, strict=True)
    assert count(net) == 28_271_661


def test_convert_errors():
    sd = authors_state_dict()
    extra = dict(sd)
    extra["resnet.dbconv9.mpconv.conv.0.weight"] = torch.zeros(3)
    with pytest.raises(KeyError, match="dbconv9"):
        convert_original_state_dict(extra)
    missing = {k: v for k, v in sd.items() if not k.startswith("resnet.dbup3.")}
    with pytest.raises(KeyError, match=r"outputs\.4\.chain\.2"):
        convert_original_state_dict(missing)
    with pytest.raises(KeyError):
        convert_original_state_dict({"foo.bar": torch.zeros(1)})
