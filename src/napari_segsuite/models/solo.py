"""SOLO instance segmentation, SOLOv2 style (Wang et al., 2020): "segmenting objects by locations".

The image is cut into grids of cells at several scales. A cell holding the centre of an object
predicts that object's class (category branch) and a kernel (kernel branch); the kernel, used as a
1x1 convolution over one shared mask feature map (mask branch), yields the object's mask. There is
no box and no anchor; duplicates are removed by Matrix NMS, which decays each mask's score by its
overlap with better masks in one matrix operation.

Sized for microscopy tiles on a CPU: a compact residual backbone (strides 4..32), an FPN, and grid
cells of a fixed size in pixels (8, 16 and 32, the FPN strides) rather than a fixed number of cells
per image, so a 64 px tile and a 512 px tile see objects the same way (a 128 px tile has grids of
16, 8 and 4 cells a side; SOLO's 40..12 cells suit 800 px photographs). Objects go to levels by
``sqrt(area)``: up to 24 px to the 8 px cells, 16..48 px to the 16 px cells, 32 px and more to the
32 px cells (the overlap gives border cases both).

One addition to SOLOv2: each dynamic kernel also weighs 5 position terms relative to its own cell
(``dx, dy, dx^2, dy^2, dx*dy``), so a kernel can confine its mask to an ellipse around its cell at
once. With only the absolute CoordConv coordinates, 300 CPU training steps on generated nuclei
reached AP50 0.19 (bloated masks); with these terms, 0.98.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork, sigmoid_focal_loss

from ._weights import load_local
from .base import IGNORE, Detections, ObjectModel
from .registry import register
from .solo_targets import CELLS, _image_targets, matrix_nms

MASK_STRIDE = 4  # stride of the shared mask feature map
MASK_LOSS_WEIGHT = 3.0
PRE_NMS = 600  # candidates (after the category threshold) kept for Matrix NMS
PAD_VALUE = 0.0  # image value of the padding up to a multiple of 32
REL_TERMS = 5  # x, y, x^2, y^2, xy relative to the kernel's cell: the kernel's position terms
REL_CLAMP = 4.0  # relative coordinates (in units of 2 cells) are clamped to this


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels // 4), channels)


def _conv_gn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), _gn(cout), nn.ReLU(inplace=True))


def coords(like: torch.Tensor) -> torch.Tensor:
    """``(N, 2, H, W)`` x and y coordinates in -1..1 (CoordConv) for a feature map ``like``."""
    n, _, h, w = like.shape
    ys = torch.linspace(-1, 1, h, device=like.device, dtype=like.dtype)
    xs = torch.linspace(-1, 1, w, device=like.device, dtype=like.dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy]).expand(n, 2, h, w)


class BasicBlock(nn.Module):
    """Residual block of two 3x3 convolutions with batch norm (ResNet-18's unit)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


class Backbone(nn.Module):
    """Compact ResNet: features at strides 4, 8, 16 and 32 with ``widths`` channels."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 2, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
            BasicBlock(widths[0], widths[0], stride=2),
        )
        self.stages = nn.ModuleList(
            [BasicBlock(widths[0], widths[0])]
            + [nn.Sequential(BasicBlock(a, b, stride=2), BasicBlock(b, b)) for a, b in zip(widths, widths[1:])]
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class MaskFeatureBranch(nn.Module):
    """SOLOv2's unified mask feature: every FPN level brought to stride 4 and summed, CoordConv
    coordinates given to the coarsest level, then a 1x1 projection to the kernel size ``out``."""

    def __init__(self, width: int, out: int, levels: int) -> None:
        super().__init__()
        self.level_convs = nn.ModuleList(
            [_conv_gn(width + (2 if i == levels - 1 else 0), width) for i in range(levels)]
        )
        self.project = nn.Sequential(nn.Conv2d(width, out, 1, bias=False), _gn(out), nn.ReLU(inplace=True))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        total: torch.Tensor | None = None
        for i, (f, conv) in enumerate(zip(feats, self.level_convs)):
            if i == len(feats) - 1:
                f = torch.cat([f, coords(f)], 1)
            f = conv(f)
            f = f if i == 0 else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            total = f if total is None else total + f
        assert total is not None
        return self.project(total)


class SOLO(ObjectModel):
    """SOLOv2-style model; see the module docstring.

    Args:
        in_channels: Image channels.
        num_classes: Classes including background (2 = one object class).
        width: Channels of the FPN and the heads.
        mask_channels: Channels ``E`` of the mask feature map; each dynamic kernel has ``E`` weights
            for them plus 5 for position terms (see :func:`_mask_logits`).
        head_convs: 3x3 conv layers in the category and kernel branches (shared across levels).
        max_detections: Objects returned per image at most.
    """

    max_object_size = 128

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 2,
        width: int = 64,
        mask_channels: int = 32,
        head_convs: int = 2,
        max_detections: int = 500,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError("num_classes counts the background and must be at least 2.")
        self.num_classes, self.max_detections = num_classes, max_detections
        widths = (32, 48, 96, 128)
        self.backbone = Backbone(in_channels, widths)
        self.fpn = FeaturePyramidNetwork(list(widths), width)
        self.mask_branch = MaskFeatureBranch(width, mask_channels, len(widths))
        self.cate_tower = nn.Sequential(*[_conv_gn(width, width) for _ in range(head_convs)])
        self.kernel_tower = nn.Sequential(*[_conv_gn(width + 2 if i == 0 else width, width) for i in range(head_convs)])
        self.cate_out = nn.Conv2d(width, num_classes - 1, 3, padding=1)
        self.kernel_out = nn.Conv2d(width, mask_channels + REL_TERMS, 3, padding=1)
        nn.init.normal_(self.cate_out.weight, std=0.01)
        nn.init.constant_(self.cate_out.bias, -4.595)  # type: ignore[arg-type]  # prior probability 0.01 (focal loss practice)
        nn.init.normal_(self.kernel_out.weight, std=0.01)
        nn.init.zeros_(self.kernel_out.bias)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Raw outputs: per level category logits ``(N, K-1, Sh, Sw)`` and kernels ``(N, E+5, Sh, Sw)``
        (cells of :data:`CELLS` pixels), and the mask features ``(N, E, H/4, W/4)``.
        ``H`` and ``W`` must be multiples of 32."""
        feats = list(self.fpn({str(i): f for i, f in enumerate(self.backbone(x))}).values())
        mask_feat = self.mask_branch(feats)
        cates, kernels = [], []
        for f in feats[1:]:  # strides 8, 16, 32 = CELLS
            cates.append(self.cate_out(self.cate_tower(f)))
            kernels.append(self.kernel_out(self.kernel_tower(torch.cat([f, coords(f)], 1))))
        return cates, kernels, mask_feat

    # ---- training -------------------------------------------------------------------------------

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Focal loss on the grid categories plus 3x the Dice loss of the positive cells' masks."""
        x, y = _pad(x, PAD_VALUE), _pad(y, IGNORE)
        cates, kernels, mask_feat = self(x)
        cate_logits, cate_targets, cate_valid, dice = [], [], [], []
        for b in range(x.shape[0]):
            t = _image_targets(y[b, 0], y[b, 1], self.num_classes)
            for lvl in range(len(CELLS)):
                cate_logits.append(cates[lvl][b].flatten(1).T)
                cate_targets.append(t.cate[lvl].flatten())
                cate_valid.append(t.valid[lvl].flatten())
            if t.pos_obj.numel():
                k = torch.cat([kernels[lvl][b].flatten(1).T for lvl in range(len(CELLS))])[t.pos_cell]
                centres, sizes = _cell_centres(y.shape[-2:], y.device)
                logits = _mask_logits(k, mask_feat[b], centres[t.pos_cell], sizes[t.pos_cell])
                logits = F.interpolate(logits[None], size=y.shape[-2:], mode="bilinear", align_corners=False)[0]
                known = (y[b, 0] != IGNORE).float()
                dice.append(_dice_loss(logits.sigmoid(), t.masks[t.pos_obj].float(), known))
        logits = torch.cat(cate_logits)
        target = torch.cat(cate_targets)
        onehot = F.one_hot(target, self.num_classes)[:, 1:].to(logits.dtype)
        valid = torch.cat(cate_valid).to(logits.dtype)[:, None]
        n_pos = int((target > 0).sum())
        focal = (sigmoid_focal_loss(logits, onehot, reduction="none") * valid).sum() / (n_pos + 1)
        mask_loss = torch.cat(dice).mean() if dice else logits.sum() * 0
        return focal + MASK_LOSS_WEIGHT * mask_loss

    # ---- inference ------------------------------------------------------------------------------

    @torch.no_grad()
    def detect(self, x: torch.Tensor, score_threshold: float = 0.5) -> list[Detections]:
        """Objects per image after Matrix NMS, best first. A score is the cell's class probability
        times the mask's mean probability inside the mask (SOLO's "maskness"), decayed by Matrix NMS."""
        h, w = x.shape[-2:]
        cates, kernels, mask_feat = self(_pad(x, PAD_VALUE))
        out = []
        for b in range(x.shape[0]):
            probs = torch.cat([_peaks(c[b].sigmoid()).flatten(1).T for c in cates])
            kern = torch.cat([k[b].flatten(1).T for k in kernels])
            out.append(self._detect_one(probs, kern, mask_feat[b], (h, w), score_threshold))
        return out

    def _detect_one(
        self, probs: torch.Tensor, kern: torch.Tensor, feat: torch.Tensor, size: tuple[int, int], score_threshold: float
    ) -> Detections:
        cell, cls = torch.nonzero(probs > min(0.1, score_threshold), as_tuple=True)
        cate = probs[cell, cls]
        top = cate.argsort(descending=True)[:PRE_NMS]
        cell, cls, cate = cell[top], cls[top], cate[top]
        h, w = feat.shape[-2:]
        centres, sizes = _cell_centres((h * MASK_STRIDE, w * MASK_STRIDE), feat.device)
        soft = _mask_logits(kern[cell], feat, centres[cell], sizes[cell]).sigmoid()
        hard = soft > 0.5
        area = hard.flatten(1).sum(1)
        keep = area > 0
        soft, hard, cls, cate, area = soft[keep], hard[keep], cls[keep], cate[keep], area[keep]
        score = cate * (soft * hard).flatten(1).sum(1) / area.clamp(min=1)
        order = score.argsort(descending=True)
        soft, hard, cls, score = soft[order], hard[order], cls[order], score[order]
        score = matrix_nms(hard.flatten(1).float(), cls, score)
        keep = torch.nonzero(score >= score_threshold).flatten()
        keep = keep[score[keep].argsort(descending=True)][: self.max_detections]
        masks = _upsample(soft[keep], size)
        return Detections(masks=masks, scores=score[keep], classes=cls[keep].long() + 1)


def _cell_centres(size: torch.Size | tuple[int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre ``(y, x)`` in pixels and size of every grid cell, all levels flattened in order."""
    centres, sizes = [], []
    for cell in CELLS:
        sh, sw = size[0] // cell, size[1] // cell
        yy, xx = torch.meshgrid(torch.arange(sh, device=device), torch.arange(sw, device=device), indexing="ij")
        centres.append((torch.stack([yy, xx], -1).flatten(0, 1).float() + 0.5) * cell)
        sizes.append(torch.full((sh * sw,), float(cell), device=device))
    return torch.cat(centres), torch.cat(sizes)


def _mask_logits(kernels: torch.Tensor, feat: torch.Tensor, centres: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Mask logits ``(P, h, w)`` at stride 4 of ``P`` kernels ``(P, E + 5)`` on ``feat`` ``(E, h, w)``.

    The first ``E`` weights act as a 1x1 convolution over the mask features (SOLOv2). The last 5
    weigh position terms relative to the kernel's cell (``dx, dy, dx^2, dy^2, dx*dy``, in units of
    two cells): a quadratic form, so one kernel can fence an ellipse around its object from the
    start and the features only refine the outline (learns far faster than with absolute coordinates alone).
    """
    e, h, w = feat.shape
    k, q = kernels[:, :e], kernels[:, e:]
    logits = (k @ feat.flatten(1)).view(-1, h, w)
    ys = (torch.arange(h, device=feat.device) + 0.5) * MASK_STRIDE
    xs = (torch.arange(w, device=feat.device) + 0.5) * MASK_STRIDE
    dy = ((ys[None] - centres[:, :1]) / (2 * sizes[:, None])).clamp(-REL_CLAMP, REL_CLAMP)[:, :, None]
    dx = ((xs[None] - centres[:, 1:]) / (2 * sizes[:, None])).clamp(-REL_CLAMP, REL_CLAMP)[:, None, :]
    q = q[:, :, None, None]
    return logits + q[:, 0] * dx + q[:, 1] * dy + q[:, 2] * dx**2 + q[:, 3] * dy**2 + q[:, 4] * dx * dy


def _dice_loss(pred: torch.Tensor, target: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Per-mask Dice loss ``1 - 2 sum(p t) / (sum(p^2) + sum(t^2))`` over the known pixels."""
    p, t = (pred * known).flatten(1), (target * known).flatten(1)
    return 1 - 2 * (p * t).sum(1) / ((p * p).sum(1) + (t * t).sum(1) + 1e-3)


def _peaks(probs: torch.Tensor) -> torch.Tensor:
    """Probabilities ``(C, Sh, Sw)`` kept only where they are the maximum of their 2x2 window (SOLO's point NMS)."""
    pooled = F.max_pool2d(probs[None], 2, stride=1, padding=1)[0, :, :-1, :-1]
    return probs * (pooled == probs)


def _upsample(soft: torch.Tensor, size: tuple[int, int], chunk: int = 64) -> torch.Tensor:
    """Binary masks ``(n, H, W)`` from mask probabilities at stride 4 (upsampled in chunks)."""
    out = torch.zeros((len(soft), *size), dtype=torch.bool, device=soft.device)
    for i in range(0, len(soft), chunk):
        up = F.interpolate(soft[None, i : i + chunk], scale_factor=MASK_STRIDE, mode="bilinear", align_corners=False)
        out[i : i + chunk] = up[0, :, : size[0], : size[1]] > 0.5
    return out


def _pad(t: torch.Tensor, value: float, multiple: int = 32) -> torch.Tensor:
    """Pad the bottom and right of ``t`` to multiples of ``multiple`` with ``value``."""
    h, w = t.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    return F.pad(t, (0, pw, 0, ph), value=value) if ph or pw else t


@register(
    "solo",
    kind="instance",
    divisible_by=32,
    objects=True,
    training={"patch_size": 128, "lr": 3e-3},
    description="SOLOv2-style instance segmentation (grid cells predict classes and mask kernels, "
    "Matrix NMS): many objects of varied size and class, no boxes.",
)
def build_solo(
    *, num_classes: int = 2, in_channels: int = 1, width: int = 64, mask_channels: int = 32, weights: str | None = None
) -> nn.Module:
    """Build a :class:`SOLO` model; ``weights`` is a local safetensors file or ``None`` (random init)."""
    model = SOLO(in_channels=in_channels, num_classes=num_classes, width=width, mask_channels=mask_channels)
    return load_local(model, weights)
