"""Purifier networks P_theta (Sec. 3.3): RRDB and ResNet generators.

Parameter names follow the authors' released ``NRP.pth`` (RRDB) and ``NRP_resG.pth`` (ResNet)
state dicts exactly, so both load with ``strict=True``.

Input: ``(B, 3, H, W)`` RGB in [0, 1], any H and W. Output: same shape, *not* clamped: the
official checkpoints were trained that way; callers clamp to [0, 1] (see ``purify``).

Initialisation: every conv inside a residual branch (the five convs of each residual dense
block, the two of each ResNet block) starts Kaiming-normal (fan-in) scaled by
``RESIDUAL_INIT_SCALE`` = 0.1 with zero bias, as BasicSR's ``default_init_weights(..., 0.1)`` and
the authors' ``initialize_weights(..., 0.1)`` do, so each block starts close to the identity.
``init_scale=None`` keeps PyTorch's default init instead (for comparison: lab/NOTEBOOK.md).
Loading a state dict replaces it.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

RESIDUAL_INIT_SCALE = 0.1  # BasicSR / the authors' module_util.initialize_weights(..., 0.1)


def init_residual_branch(convs: list[nn.Conv2d], scale: float | None = RESIDUAL_INIT_SCALE) -> None:
    """Kaiming-normal (fan-in, a=0) weights times ``scale`` and zero biases, in place; ``None``
    leaves PyTorch's default init."""
    if scale is None:
        return
    for conv in convs:
        nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in")
        conv.weight.data.mul_(scale)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs with dense connections (growth ``gc``), residual scaled by 0.2."""

    def __init__(self, nf: int = 64, gc: int = 32, residual_scale: float = 0.2,
                 init_scale: float | None = RESIDUAL_INIT_SCALE) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(nf, gc, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf + gc, gc, 3, 1, 1)
        self.conv3 = nn.Conv2d(nf + 2 * gc, gc, 3, 1, 1)
        self.conv4 = nn.Conv2d(nf + 3 * gc, gc, 3, 1, 1)
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)
        self.residual_scale = residual_scale
        init_residual_branch([self.conv1, self.conv2, self.conv3, self.conv4, self.conv5], init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * self.residual_scale + x


class RRDB(nn.Module):
    """Residual-in-Residual Dense Block: three dense blocks, outer residual scaled by 0.2."""

    def __init__(self, nf: int = 64, gc: int = 32, residual_scale: float = 0.2,
                 init_scale: float | None = RESIDUAL_INIT_SCALE) -> None:
        super().__init__()
        self.RDB1 = ResidualDenseBlock(nf, gc, residual_scale, init_scale)
        self.RDB2 = ResidualDenseBlock(nf, gc, residual_scale, init_scale)
        self.RDB3 = ResidualDenseBlock(nf, gc, residual_scale, init_scale)
        self.residual_scale = residual_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.RDB3(self.RDB2(self.RDB1(x))) * self.residual_scale + x


class _Trunk(nn.Sequential):
    """A sequence of blocks that can recompute activations in backward (``checkpointing``)."""

    checkpointing: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self:
            if self.checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class RRDBPurifier(nn.Module):
    """NRP's generator: ``conv_first`` -> ``nb`` RRDB blocks -> ``trunk_conv`` (no input skip,
    as the authors').

    Official size ``nf=64, nb=23, gc=32`` (16.55M parameters). ``activation_checkpointing``
    trades one extra trunk forward in backward for not storing the trunk's activations.
    ``init_scale``: of the residual branches' Kaiming init (module docstring; None: PyTorch's).
    """

    def __init__(self, nf: int = 64, nb: int = 23, gc: int = 32, activation_checkpointing: bool = False,
                 init_scale: float | None = RESIDUAL_INIT_SCALE) -> None:
        super().__init__()
        if min(nf, nb, gc) < 1:
            raise ValueError(f"RRDBPurifier needs nf, nb, gc >= 1, got nf={nf} nb={nb} gc={gc}")
        self.conv_first = nn.Conv2d(3, nf, 3, 1, 1)
        self.RRDB_trunk = _Trunk(*[RRDB(nf, gc, init_scale=init_scale) for _ in range(nb)])
        self.RRDB_trunk.checkpointing = activation_checkpointing
        self.trunk_conv = nn.Conv2d(nf, 3, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk_conv(self.RRDB_trunk(self.conv_first(x)))


class ResidualBlockNoBN(nn.Module):
    """conv-ReLU-conv plus identity, no batch norm (the released ResNet purifier's block)."""

    def __init__(self, nf: int = 64, init_scale: float | None = RESIDUAL_INIT_SCALE) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf, nf, 3, 1, 1)
        init_residual_branch([self.conv1, self.conv2], init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


class ResNetPurifier(nn.Module):
    """The second released purifier: ``conv_first`` -> ``nb`` residual blocks -> ``conv_last``."""

    def __init__(self, nf: int = 64, nb: int = 23, activation_checkpointing: bool = False,
                 init_scale: float | None = RESIDUAL_INIT_SCALE) -> None:
        super().__init__()
        if min(nf, nb) < 1:
            raise ValueError(f"ResNetPurifier needs nf, nb >= 1, got nf={nf} nb={nb}")
        self.conv_first = nn.Conv2d(3, nf, 3, 1, 1)
        self.recon_trunk = _Trunk(*[ResidualBlockNoBN(nf, init_scale) for _ in range(nb)])
        self.recon_trunk.checkpointing = activation_checkpointing
        self.conv_last = nn.Conv2d(nf, 3, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_last(self.recon_trunk(self.lrelu(self.conv_first(x))))


def purify(purifier: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``P(x)`` clamped to [0, 1]. ``x``: ``(B, 3, H, W)`` in [0, 1]."""
    return purifier(x).clamp(0.0, 1.0)
