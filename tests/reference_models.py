"""Independent, straightforward implementations used as references.

- ``TVResNet``: torchvision's ResNet as plainly written there (what users run today),
  used to check numbers and as the speed baseline in benchmarks/bench_zoo.py.
- ``TutorialUNet``: the tutorial's U-Net written the way the tutorial does
  (fixed 5 levels, crashes on sizes not divisible by 16).

They share no code with torchsmith.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Basic(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TVResNet(nn.Module):
    def __init__(self, block, layers, num_classes=1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


TV_RESNETS = {
    "resnet18": (_Basic, [2, 2, 2, 2]),
    "resnet34": (_Basic, [3, 4, 6, 3]),
    "resnet50": (_Bottleneck, [3, 4, 6, 3]),
    "resnet101": (_Bottleneck, [3, 4, 23, 3]),
    "resnet152": (_Bottleneck, [3, 8, 36, 3]),
}


def tv_resnet(name: str) -> TVResNet:
    block, layers = TV_RESNETS[name]
    return TVResNet(block, layers)


# the tutorial's U-Net


class _Conv(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.layer = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.Dropout(0.3), nn.LeakyReLU(),
            nn.Conv2d(c_out, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.Dropout(0.4), nn.LeakyReLU(),
        )

    def forward(self, x):
        return self.layer(x)


class _Down(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.layer = nn.Sequential(nn.Conv2d(c, c, 3, 2, 1), nn.LeakyReLU())

    def forward(self, x):
        return self.layer(x)


class _Up(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.layer = nn.Conv2d(c, c // 2, 1, 1)

    def forward(self, x, skip):
        up = F.interpolate(x, scale_factor=2, mode="nearest")
        return torch.cat((self.layer(up), skip), 1)


class TutorialUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.C1 = _Conv(3, 64)
        self.D1 = _Down(64)
        self.C2 = _Conv(64, 128)
        self.D2 = _Down(128)
        self.C3 = _Conv(128, 256)
        self.D3 = _Down(256)
        self.C4 = _Conv(256, 512)
        self.D4 = _Down(512)
        self.C5 = _Conv(512, 1024)
        self.U1 = _Up(1024)
        self.C6 = _Conv(1024, 512)
        self.U2 = _Up(512)
        self.C7 = _Conv(512, 256)
        self.U3 = _Up(256)
        self.C8 = _Conv(256, 128)
        self.U4 = _Up(128)
        self.C9 = _Conv(128, 64)
        self.pred = nn.Conv2d(64, 3, 3, 1, 1)
        self.Th = nn.Sigmoid()

    def forward(self, x):
        R1 = self.C1(x)
        R2 = self.C2(self.D1(R1))
        R3 = self.C3(self.D2(R2))
        R4 = self.C4(self.D3(R3))
        Y1 = self.C5(self.D4(R4))
        O1 = self.C6(self.U1(Y1, R4))
        O2 = self.C7(self.U2(O1, R3))
        O3 = self.C8(self.U3(O2, R2))
        O4 = self.C9(self.U4(O3, R1))
        return self.Th(self.pred(O4))

    # parameter order as our UNet registers them: stem, downs, encoder, ups, decoder, head
    def ordered_modules(self):
        return [self.C1, self.D1, self.D2, self.D3, self.D4, self.C2, self.C3, self.C4, self.C5,
                self.U1, self.U2, self.U3, self.U4, self.C6, self.C7, self.C8, self.C9, self.pred]


def copy_by_order(src: nn.Module, dst_modules: list[nn.Module]) -> None:
    """Copy src's state (params and buffers, in registration order) into dst modules."""
    dst = [t for m in dst_modules for t in m.state_dict(keep_vars=True).values()]
    srcs = list(src.state_dict(keep_vars=True).values())
    assert len(dst) == len(srcs), (len(dst), len(srcs))
    with torch.no_grad():
        for d, s in zip(dst, srcs):
            assert d.shape == s.shape, (d.shape, s.shape)
            d.copy_(s)


# torchvision's FPN backbone, as plainly written there (frozen BN, loops that find blocks by index)


class TVFrozenBN(nn.Module):
    def __init__(self, n):
        super().__init__()
        for name, value in (("weight", torch.ones(n)), ("bias", torch.zeros(n)), ("running_mean", torch.zeros(n)), ("running_var", torch.ones(n))):
            self.register_buffer(name, value)

    def forward(self, x):
        w = self.weight.reshape(1, -1, 1, 1)
        b = self.bias.reshape(1, -1, 1, 1)
        rv = self.running_var.reshape(1, -1, 1, 1)
        rm = self.running_mean.reshape(1, -1, 1, 1)
        scale = w * (rv + 1e-5).rsqrt()
        bias = b - rm * scale
        return x * scale + bias


def _swap_bn(module):
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, TVFrozenBN(child.num_features))
        else:
            _swap_bn(child)
    return module


class TVFPN(nn.Module):
    def __init__(self, in_channels_list, out_channels):
        super().__init__()
        self.inner_blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(c, out_channels, 1)) for c in in_channels_list)
        self.layer_blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, padding=1)) for _ in in_channels_list)

    def get_result_from_inner_blocks(self, x, idx):
        num_blocks = len(self.inner_blocks)
        if idx < 0:
            idx += num_blocks
        out = x
        for i, module in enumerate(self.inner_blocks):
            if i == idx:
                out = module(x)
        return out

    def get_result_from_layer_blocks(self, x, idx):
        num_blocks = len(self.layer_blocks)
        if idx < 0:
            idx += num_blocks
        out = x
        for i, module in enumerate(self.layer_blocks):
            if i == idx:
                out = module(x)
        return out

    def forward(self, x):
        names = list(x.keys())
        x = list(x.values())
        last_inner = self.get_result_from_inner_blocks(x[-1], -1)
        results = [self.get_result_from_layer_blocks(last_inner, -1)]
        for idx in range(len(x) - 2, -1, -1):
            inner_lateral = self.get_result_from_inner_blocks(x[idx], idx)
            inner_top_down = F.interpolate(last_inner, size=inner_lateral.shape[-2:], mode="nearest")
            last_inner = inner_lateral + inner_top_down
            results.insert(0, self.get_result_from_layer_blocks(last_inner, idx))
        names.append("pool")
        results.append(F.max_pool2d(results[-1], 1, 2, 0))
        return dict(zip(names, results))


class TVBackboneWithFPN(nn.Module):
    def __init__(self, name="resnet50"):
        super().__init__()
        resnet = _swap_bn(tv_resnet(name))
        self.body = nn.ModuleDict((n, m) for n, m in resnet.named_children() if n not in ("avgpool", "fc"))
        self.fpn = TVFPN([256, 512, 1024, 2048], 256)

    def forward(self, x):
        feats = {}
        for name, module in self.body.items():
            x = module(x)
            if name.startswith("layer"):
                feats[str(int(name[-1]) - 1)] = x
        return self.fpn(feats)
