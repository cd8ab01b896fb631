"""Network builders: MLPs, and the small conv encoder and transposed-conv decoder for images, sized by a :class:`NetConfig`."""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn as nn

from ..errors import PyroVAEError

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
}


def mlp(in_features: int, hidden: Sequence[int], out_features: int, activation: str = "relu") -> nn.Sequential:
    """``Linear -> act -> ... -> Linear``; ``hidden = []`` gives one linear map.

    Works on inputs with any number of leading batch dimensions, which is what
    lets evaluation vectorize over importance samples.
    """
    act = ACTIVATIONS[activation]
    layers = []
    sizes = [in_features, *hidden]
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), act()]
    layers.append(nn.Linear(sizes[-1], out_features))
    return nn.Sequential(*layers)


class FlatBatchNorm(nn.Module):
    """Batch normalization without an affine part over the last dim, for inputs with any leading dims (draws,
    enumeration): they are flattened into rows, since ``nn.BatchNorm1d`` would read a 3-D input's dim 1 as features.

    In training mode it normalizes by the batch's statistics and updates running ones; in eval mode by the
    running ones, so that a row's density depends on that row alone (every evaluation runs in eval mode).  A
    batch of one row has no spread to normalize by, so it is normalized by the running statistics.
    """

    def __init__(self, features: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(features, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat, lead = _flat(x, 1)
        if self.training and flat.shape[0] > 1:
            out = self.bn(flat)
        else:
            out = nn.functional.batch_norm(flat, self.bn.running_mean, self.bn.running_var, training=False,
                                           eps=self.bn.eps)
        return out.reshape(lead + out.shape[-1:])


def _flat(x: torch.Tensor, trailing: int):
    """``x`` as (rows, *trailing dims) and the leading shape to restore (draws and enumeration add dims)."""
    lead = x.shape[: x.dim() - trailing]
    return x.reshape((-1,) + tuple(x.shape[x.dim() - trailing:])), lead


def check_image(image_shape, what: str) -> Tuple[int, int]:
    """The (height, width) a conv net at ``what`` works on, or a one-line error saying why there is none."""
    if image_shape is None:
        raise PyroVAEError(f"{what}: type = \"conv\" needs image data, but the data source gives no image shape "
                           "(digits, fashion-mnist and mnist do; rows of a .npy/.csv file do not): use type = \"mlp\"")
    h, w = image_shape
    if h % 4 or w % 4:
        raise PyroVAEError(f"{what}: type = \"conv\" halves the image twice, so its sides must be multiples of 4 "
                           f"(the images are {h}x{w}): use type = \"mlp\"")
    return int(h), int(w)


class ConvEncoder(nn.Module):
    """An image row (H*W values) -> two stride-2 convolutions -> flat features (channels[1] * H/4 * W/4)."""

    def __init__(self, image_shape, channels: Sequence[int], activation: str = "relu"):
        super().__init__()
        self.image_shape = tuple(image_shape)
        act = ACTIVATIONS[activation]
        c1, c2 = channels
        self.net = nn.Sequential(nn.Conv2d(1, c1, 4, stride=2, padding=1), act(),
                                 nn.Conv2d(c1, c2, 4, stride=2, padding=1), act(), nn.Flatten())
        self.out_features = c2 * (self.image_shape[0] // 4) * (self.image_shape[1] // 4)

    def forward(self, x):
        flat, lead = _flat(x, 1)
        out = self.net(flat.reshape(-1, 1, *self.image_shape))
        return out.reshape(lead + (self.out_features,))


class ConvDecoder(nn.Module):
    """Features -> MLP -> (channels[1], H/4, W/4) -> two stride-2 transposed convolutions -> ``maps`` per pixel.

    The output is flat, map-major (all pixels of map 0, then map 1, ...), the layout the location-scale
    likelihoods split; ``pixel_major`` interleaves the maps per pixel instead (a categorical likelihood's).
    """

    def __init__(self, in_features: int, hidden: Sequence[int], image_shape, channels: Sequence[int], maps: int,
                 activation: str = "relu", pixel_major: bool = False):
        super().__init__()
        act = ACTIVATIONS[activation]
        c1, c2 = channels
        self.image_shape, self.maps, self.pixel_major = tuple(image_shape), int(maps), pixel_major
        self.grid = (c2, self.image_shape[0] // 4, self.image_shape[1] // 4)
        self.dense = nn.Sequential(mlp(in_features, hidden, c2 * self.grid[1] * self.grid[2], activation), act())
        self.net = nn.Sequential(nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), act(),
                                 nn.ConvTranspose2d(c1, self.maps, 4, stride=2, padding=1))

    def forward(self, z):
        flat, lead = _flat(z, 1)
        out = self.net(self.dense(flat).reshape(-1, *self.grid))  # (rows, maps, H, W)
        out = out.permute(0, 2, 3, 1) if self.pixel_major else out
        return out.reshape(lead + (-1,))


def encoder_network(in_features: int, out_features: int, cfg, image_shape=None, what: str = "encoder") -> nn.Module:
    """An encoder from a :class:`NetConfig`: the MLP, or (``type = "conv"``) the conv encoder on the image first."""
    if cfg.type != "conv":
        return mlp(in_features, cfg.hidden, out_features, cfg.activation)
    h, w = check_image(image_shape, what)
    if h * w != in_features:
        raise _not_image(what, in_features, image_shape)
    conv = ConvEncoder((h, w), cfg.channels, cfg.activation)
    return nn.Sequential(conv, mlp(conv.out_features, cfg.hidden, out_features, cfg.activation))


def decoder_network(in_features: int, likelihood, cfg, image_shape=None, what: str = "decoder") -> nn.Module:
    """A decoder to ``likelihood``'s parameters: the MLP, or (``type = "conv"``) transposed convolutions."""
    if cfg.type != "conv":
        return mlp(in_features, cfg.hidden, likelihood.out_features, cfg.activation)
    h, w = check_image(image_shape, what)
    if h * w != likelihood.data_dim:
        raise _not_image(what, likelihood.data_dim, image_shape)
    return ConvDecoder(in_features, cfg.hidden, (h, w), cfg.channels, likelihood.out_features // likelihood.data_dim,
                       cfg.activation, pixel_major=getattr(likelihood, "discrete", False))


def _not_image(what: str, width: int, image_shape):
    """The one-line error for a conv net on rows that are not the source's images."""
    return PyroVAEError(f"{what}: type = \"conv\" reads {image_shape[0]}x{image_shape[1]} images, but the data's rows "
                        f"have {width} values: use type = \"mlp\"")
