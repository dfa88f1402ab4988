"""DeepMask (Pinheiro, Collobert & Dollar, 2015): class-agnostic object proposals as window masks.

For every window of ``P x P`` pixels on a stride-``s`` grid, the model predicts (1) the mask of the
object centred in that window, at ``m x m`` resolution, and (2) an objectness score: is an object
centred here, of a size that fits the window? Running the image at several scales lets a fixed
window catch objects of different sizes.

Fully convolutional design (sized for microscopy on a CPU): a small shared trunk (conv-BN-ReLU,
three 2x poolings, stride ``s = 8``) runs once per image and scale. The paper's fully connected
layers on a window of trunk features become one *window convolution* (kernel: the ``P / s + 1``
cells a window touches) after a
1x1 bottleneck, which embeds every grid location's window into a ``D``-vector. Two heads read the
embedding: the mask head (one linear map to ``m * m`` logits, the paper's mask layer) and the score
head (a small MLP to one logit). Masks are only decoded at the locations that need them (positives
in training, candidates at inference), so dense scoring costs one window convolution, and the mask
layer runs on a few hundred vectors. A per-window decoder on upsampled features would give sharper
masks but cost one decoder run per candidate; ``m = P / 2`` is sharp enough for nuclei.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import nms

from ._weights import load_local
from .base import IGNORE, Detections, ObjectModel
from .blocks import ConvNormAct
from .registry import register


class DeepMask(ObjectModel):
    """Dense DeepMask: a trunk, a window embedding and mask / score (/ class) heads.

    Args:
        in_channels: Image channels.
        num_classes: 2 for class-agnostic objects; with more, a class head predicts classes 1..K-1.
        window: ``P``, the window side in pixels of the scaled image (a multiple of the stride 8).
        mask_size: ``m``, the side of the predicted mask (upsampled to ``P``).
        width: Channels of the trunk's first level (doubled at each of the next two levels).
        embed_dim: ``D``, the size of each window's embedding.
        scales: Image scales used by :meth:`detect`, :meth:`mask_at` and in training.
        fit: ``(lo, hi)``: an object is a positive at a scale when its larger bounding-box side,
            scaled, lies within ``[lo * P, hi * P]``; the overlapping bands (factor 2.5 per factor-2
            scale step) give every object up to ``hi * P / min(scales)`` pixels a scale that fits.
        nms_iou: Box IoU above which :meth:`detect` keeps only the best of two masks.
        max_detections: Most objects :meth:`detect` returns per image.
    """

    stride = 8

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 2,
        window: int = 48,
        mask_size: int = 24,
        width: int = 16,
        embed_dim: int = 256,
        scales: tuple[float, ...] = (0.5, 1.0, 2.0),
        fit: tuple[float, float] = (0.3, 0.75),
        nms_iou: float = 0.5,
        max_detections: int = 500,
    ) -> None:
        super().__init__()
        if window % self.stride:
            raise ValueError(f"window must be a multiple of {self.stride}, got {window}.")
        self.window, self.mask_size, self.num_classes = window, mask_size, num_classes
        self.scales, self.fit = tuple(sorted(scales)), fit
        self.nms_iou, self.max_detections = nms_iou, max_detections
        self.max_object_size = int(math.ceil(fit[1] * window / min(scales)))
        c1, c2, c3 = width, 2 * width, 4 * width
        self.trunk = nn.Sequential(
            ConvNormAct(in_channels, c1),
            ConvNormAct(c1, c1),
            nn.MaxPool2d(2),
            ConvNormAct(c1, c2),
            ConvNormAct(c2, c2),
            nn.MaxPool2d(2),
            ConvNormAct(c2, c3),
            ConvNormAct(c3, c3),
            nn.MaxPool2d(2),
            ConvNormAct(c3, c3),
            ConvNormAct(c3, c3),
        )
        k = 2 * (window // (2 * self.stride)) + 1  # odd: the cells a window centred on a cell touches
        self.embed = nn.Sequential(
            nn.Conv2d(c3, c3 // 2, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c3 // 2, embed_dim, k, padding=k // 2),
            nn.ReLU(inplace=True),
        )
        self.mask_head = nn.Linear(embed_dim, mask_size * mask_size)
        self.score_head = nn.Sequential(
            nn.Conv2d(embed_dim, embed_dim // 2, 1), nn.ReLU(inplace=True), nn.Conv2d(embed_dim // 2, 1, 1)
        )
        self.class_head = nn.Conv2d(embed_dim, num_classes - 1, 1) if num_classes > 2 else None

    # --- dense forward ----------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Window embeddings ``(N, D, h, w)`` and objectness logits ``(N, 1, h, w)`` on the stride grid
        (``h = ceil(H / 8)``); cell ``(i, j)``'s window is centred on pixel ``(8i + 3.5, 8j + 3.5)``."""
        h, w = x.shape[-2:]
        x = F.pad(x, (0, -w % self.stride, 0, -h % self.stride))
        emb = self.embed(self.trunk(x))
        return emb, self.score_head(emb)

    def _window_origin(self, idx: torch.Tensor) -> torch.Tensor:
        """Top-left pixel (in the scaled image) of the window of grid index ``idx``."""
        return idx * self.stride + self.stride // 2 - self.window // 2

    # --- training ---------------------------------------------------------------------------
    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Balanced objectness BCE on all known locations, mask BCE + Dice on positives (known pixels
        only) and, with a class head, class CE on positives; averaged over :attr:`scales` (a scale
        above 1 zooms into a random part of the crop, keeping the crop's size; see :meth:`_targets`)."""
        total = x.new_zeros(())
        for sc in self.scales:
            xs, ys = self._zoom(x, y, sc)
            total = total + self._loss_one_scale(xs, ys)
        return total / len(self.scales)

    def _zoom(self, x: torch.Tensor, y: torch.Tensor, sc: float) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = x.shape[-2:]
        if sc > 1:
            ch, cw = max(1, round(h / sc)), max(1, round(w / sc))
            y0 = int(torch.randint(0, h - ch + 1, ()))
            x0 = int(torch.randint(0, w - cw + 1, ()))
            x, y = x[..., y0 : y0 + ch, x0 : x0 + cw], y[..., y0 : y0 + ch, x0 : x0 + cw]
        size = (max(1, round(x.shape[-2] * sc)), max(1, round(x.shape[-1] * sc)))
        if sc == 1:
            return x, y
        xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=sc < 1)
        ys = F.interpolate(y.float(), size=size, mode="nearest").long()
        return xs, ys

    def _loss_one_scale(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        emb, score = self(x)
        gh, gw = score.shape[-2:]
        s_loss: list[torch.Tensor] = []
        m_logits, m_targets, m_valid, c_logits, c_targets = [], [], [], [], []
        for b in range(x.shape[0]):
            label, obj_ids, obj_cls = self._targets(y[b], gh, gw)
            logit = score[b, 0]
            pos, neg = label == 1, label == 0
            parts = [
                F.binary_cross_entropy_with_logits(logit[sel], torch.full_like(logit[sel], t))
                for sel, t in ((pos, 1.0), (neg, 0.0))
                if sel.any()
            ]
            if parts:
                s_loss.append(torch.stack(parts).sum() / len(parts))
            if pos.any():
                ii, jj = torch.nonzero(pos, as_tuple=True)
                m_logits.append(self.mask_head(emb[b, :, ii, jj].T))
                tgt, valid = self._window_targets(y[b, 0], ii, jj, obj_ids[ii, jj])
                m_targets.append(tgt)
                m_valid.append(valid)
                if self.class_head is not None:
                    c_logits.append(self.class_head(emb[b : b + 1])[0, :, ii, jj].T)
                    c_targets.append(obj_cls[ii, jj] - 1)
        loss = torch.stack(s_loss).mean() if s_loss else score.sum() * 0
        # keep every parameter in the graph, even without positives
        loss = loss + 0 * self.mask_head.weight.sum() + 0 * self.mask_head.bias.sum()
        if m_logits:
            m = self.mask_size
            logits = torch.cat(m_logits).view(-1, 1, m, m)
            logits = F.interpolate(logits, size=(self.window,) * 2, mode="bilinear", align_corners=False)[:, 0]
            valid, target = torch.cat(m_valid), torch.cat(m_targets)
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            prob = torch.sigmoid(logits) * valid
            dice = 1 - (2 * (prob * target).sum((1, 2)) + 1) / (prob.sum((1, 2)) + (target * valid).sum((1, 2)) + 1)
            loss = loss + (bce * valid).sum() / valid.sum().clamp_min(1) + dice.mean()
        if c_logits:
            ct = torch.cat(c_targets)
            keep = ct >= 0
            if keep.any():
                loss = loss + F.cross_entropy(torch.cat(c_logits)[keep], ct[keep])
        if self.class_head is not None:
            loss = loss + 0 * sum(p.sum() for p in self.class_head.parameters())
        return loss

    @torch.no_grad()
    def _targets(self, y: torch.Tensor, gh: int, gw: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per grid cell: label (1 positive, 0 negative, -1 ignored), the object id and class it is assigned.

        A cell is positive when the centroid of an object whose size fits the window lies within one
        stride of the cell's window centre (every object has such a cell). Cells that are a little
        further (up to 1.5 strides) from an object that (nearly) fits, or whose centre pixel is unknown,
        are ignored. All others are negatives, including cells centred on objects far too small or
        too large for the window at this scale: that teaches the score its scale selectivity.
        """
        ids, cls = y[0], y[1]
        dev = y.device
        cy = (torch.arange(gh, device=dev) * self.stride + (self.stride - 1) / 2)[:, None].float()
        cx = (torch.arange(gw, device=dev) * self.stride + (self.stride - 1) / 2)[None, :].float()
        label = torch.zeros(gh, gw, dtype=torch.long, device=dev)
        obj_ids = torch.zeros(gh, gw, dtype=torch.long, device=dev)
        obj_cls = torch.ones(gh, gw, dtype=torch.long, device=dev)
        # unknown window centres are ignored
        h, w = ids.shape
        centre_ids = F.pad(ids, (0, gw * self.stride - w, 0, gh * self.stride - h), value=IGNORE)
        centre_ids = centre_ids[self.stride // 2 :: self.stride, self.stride // 2 :: self.stride][:gh, :gw]
        label[centre_ids < 0] = -1
        fg = ids > 0
        if not fg.any():
            return label, obj_ids, obj_cls
        yy, xx = torch.nonzero(fg, as_tuple=True)
        uniq, inv = torch.unique(ids[fg], return_inverse=True)
        n = len(uniq)
        cnt = torch.zeros(n, device=dev).index_add_(0, inv, torch.ones_like(yy, dtype=torch.float))
        my = torch.zeros(n, device=dev).index_add_(0, inv, yy.float()) / cnt
        mx = torch.zeros(n, device=dev).index_add_(0, inv, xx.float()) / cnt
        ext = []
        for coord in (yy, xx):
            lo = torch.full((n,), 1 << 30, device=dev, dtype=torch.long).scatter_reduce(0, inv, coord, "amin")
            hi = torch.full((n,), -1, device=dev, dtype=torch.long).scatter_reduce(0, inv, coord, "amax")
            ext.append(hi - lo + 1)
        size = torch.maximum(*ext).float()
        fits = (size >= self.fit[0] * self.window) & (size <= self.fit[1] * self.window)
        near = (size >= 0.8 * self.fit[0] * self.window) & (size <= 1.15 * self.fit[1] * self.window)
        dist = torch.sqrt((cy[..., None] - my) ** 2 + (cx[..., None] - mx) ** 2)  # (gh, gw, n)
        s = float(self.stride)
        ignore = ((dist <= 1.5 * s) & near).any(-1)
        label[ignore] = -1
        d_fit = torch.where((dist <= s) & fits, dist, torch.full_like(dist, float("inf")))
        best_d, best = d_fit.min(-1)
        pos = torch.isfinite(best_d) & (centre_ids >= 0)
        label[pos] = 1
        obj_ids[pos] = uniq[best[pos]]
        # the class of an object is the most common known class among its pixels
        obj_class = torch.ones(n, dtype=torch.long, device=dev)
        if self.class_head is not None:
            known = cls[fg]
            votes = torch.zeros(n, self.num_classes, device=dev)
            ok = known >= 0
            votes.index_put_((inv[ok], known[ok]), torch.ones(int(ok.sum()), device=dev), accumulate=True)
            votes[:, 0] = 0
            obj_class = torch.where(votes.sum(1) > 0, votes.argmax(1), torch.zeros_like(obj_class))
        obj_cls[pos] = obj_class[best[pos]]
        return label, obj_ids, obj_cls

    def _window_targets(
        self, ids: torch.Tensor, ii: torch.Tensor, jj: torch.Tensor, obj: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(n, P, P)`` mask targets (object ``obj`` in the window of cell ``(ii, jj)``) and validity
        (known pixels inside the image)."""
        p = self.window
        padded = F.pad(ids, (p, p, p, p), value=IGNORE)
        r = torch.arange(p, device=ids.device)
        rows = (self._window_origin(ii) + p)[:, None, None] + r[None, :, None]
        cols = (self._window_origin(jj) + p)[:, None, None] + r[None, None, :]
        win = padded[rows, cols]
        return (win == obj[:, None, None]).float(), (win != IGNORE).float()

    # --- inference --------------------------------------------------------------------------
    def _dense(self, x: torch.Tensor, sc: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embeddings ``(D, h, w)`` and objectness ``(h, w)`` of image ``x`` ``(1, C, H, W)`` at scale
        ``sc``, and the mask of grid cells whose window centre lies inside the scaled image."""
        h, w = x.shape[-2:]
        size = (max(1, round(h * sc)), max(1, round(w * sc)))
        xs = x if sc == 1 else F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=sc < 1)
        emb, logit = self(xs)
        prob = torch.sigmoid(logit[0, 0])
        inside = torch.zeros_like(prob, dtype=torch.bool)
        inside[: math.ceil(size[0] / self.stride), : math.ceil(size[1] / self.stride)] = True
        return emb[0], prob, inside

    def _decode(self, emb: torch.Tensor, ii: torch.Tensor, jj: torch.Tensor, sc: float) -> dict[str, torch.Tensor]:
        """Mask logits ``(n, m, m)``, classes, window origins ``(n, 2)`` (y, x) and tight mask boxes
        ``(n, 4)`` (x0, y0, x1, y1) in input pixels of the cells ``(ii, jj)``; empty masks get an
        empty box (x1 <= x0)."""
        vec = emb[:, ii, jj].T
        masks = self.mask_head(vec).view(-1, self.mask_size, self.mask_size)
        if self.class_head is not None:
            classes = self.class_head(emb[None])[0][:, ii, jj].argmax(0) + 1
        else:
            classes = torch.ones_like(ii)
        origin = torch.stack([self._window_origin(ii), self._window_origin(jj)], 1).float() / sc
        fine = F.interpolate(masks[:, None], size=(self.window,) * 2, mode="bilinear", align_corners=False)[:, 0] > 0
        r = torch.arange(self.window, device=emb.device, dtype=torch.float)
        rows, cols = fine.any(2).float(), fine.any(1).float()  # (n, P)
        big = float(self.window)
        y0 = torch.where(rows > 0, r, big).amin(1)
        y1 = torch.where(rows > 0, r + 1, -big).amax(1)
        x0 = torch.where(cols > 0, r, big).amin(1)
        x1 = torch.where(cols > 0, r + 1, -big).amax(1)
        boxes = torch.stack([x0, y0, x1, y1], 1) / sc + origin[:, [1, 0, 1, 0]]
        return {"masks": masks, "classes": classes, "origin": origin, "boxes": boxes}

    def _paste(
        self, mask_logits: torch.Tensor, origin: torch.Tensor, sc: float, shape: tuple[int, int]
    ) -> torch.Tensor:
        """An ``m x m`` mask logit map resized to its window in input pixels, placed in an ``(H, W)`` image."""
        h, w = shape
        y0, x0 = int(round(float(origin[0]))), int(round(float(origin[1])))
        side = max(1, int(round(self.window / sc)))
        win = F.interpolate(mask_logits[None, None], size=(side, side), mode="bilinear", align_corners=False)[0, 0]
        out = torch.zeros(h, w, dtype=torch.bool, device=mask_logits.device)
        ya, xa, yb, xb = max(y0, 0), max(x0, 0), min(y0 + side, h), min(x0 + side, w)
        if yb > ya and xb > xa:
            out[ya:yb, xa:xb] = win[ya - y0 : yb - y0, xa - x0 : xb - x0] > 0
        return out

    @torch.no_grad()
    def detect(self, x: torch.Tensor, score_threshold: float = 0.5) -> list[Detections]:
        """Objects in each image: windows at every scale scoring at least ``score_threshold``, box NMS
        (IoU :attr:`nms_iou`, boxes of the predicted masks) across scales, masks pasted at input size."""
        return [self._detect_one(x[b : b + 1], score_threshold) for b in range(x.shape[0])]

    def _detect_one(self, x: torch.Tensor, score_threshold: float) -> Detections:
        h, w = x.shape[-2:]
        found: list[dict[str, torch.Tensor]] = []
        for sc in self.scales:
            emb, prob, inside = self._dense(x, sc)
            ii, jj = torch.nonzero((prob >= score_threshold) & inside, as_tuple=True)
            order = prob[ii, jj].argsort(descending=True)[: 4 * self.max_detections]
            ii, jj = ii[order], jj[order]
            d = self._decode(emb, ii, jj, sc)
            d["scores"] = prob[ii, jj]
            d["scale"] = torch.full_like(d["scores"], sc)
            found.append(d)
        cat = {k: torch.cat([d[k] for d in found]) for k in found[0]}
        ok = (cat["boxes"][:, 2] > cat["boxes"][:, 0]) & (cat["boxes"][:, 3] > cat["boxes"][:, 1])
        cat = {k: v[ok] for k, v in cat.items()}
        keep = nms(cat["boxes"].float(), cat["scores"].float(), self.nms_iou)[: self.max_detections]
        masks = [self._paste(cat["masks"][k], cat["origin"][k], float(cat["scale"][k]), (h, w)) for k in keep]
        masks_t = torch.stack(masks) if masks else torch.zeros(0, h, w, dtype=torch.bool, device=x.device)
        return {"masks": masks_t, "scores": cat["scores"][keep], "classes": cat["classes"][keep].long()}

    @torch.no_grad()
    def mask_at(self, x: torch.Tensor, point: tuple[float, float]) -> tuple[torch.Tensor, float]:
        """Click-to-segment: the object at ``point`` ``(y, x)`` (pixels) of image ``x`` ``(1, C, H, W)``.

        Only a region around the click is processed at each scale (large enough for the windows and
        the trunk's receptive field), so the cost does not grow with the image. At each scale,
        windows whose centre lies within a quarter window (in input pixels) of the click are candidates;
        the best-scoring one whose mask contains the clicked pixel wins, over all scales (if no mask
        contains it, the best-scoring candidate). Its mask is pasted at input resolution.

        Returns:
            ``(mask, score)``: ``(H, W)`` bool and the window's objectness in 0..1 (an empty mask and
            0.0 when the point is outside the image).
        """
        h, w = x.shape[-2:]
        py, px = float(point[0]), float(point[1])
        empty = torch.zeros(h, w, dtype=torch.bool, device=x.device)
        if not (0 <= py < h and 0 <= px < w):
            return empty, 0.0
        best: tuple[float, float, torch.Tensor, int, int] | None = None  # (contains, score, mask, y0, x0)
        for sc in self.scales:
            half = int(math.ceil((self.window + 48) / sc))
            ya, xa = max(0, int(py) - half), max(0, int(px) - half)
            crop = x[..., ya : int(py) + half + 1, xa : int(px) + half + 1]
            ch, cw = crop.shape[-2:]
            cy, cx = py - ya, px - xa
            emb, prob, inside = self._dense(crop, sc)
            gy = (torch.arange(prob.shape[0], device=x.device) * self.stride + (self.stride - 1) / 2) / sc
            gx = (torch.arange(prob.shape[1], device=x.device) * self.stride + (self.stride - 1) / 2) / sc
            near = ((gy[:, None] - cy) ** 2 + (gx[None, :] - cx) ** 2).sqrt() <= self.window / sc / 4
            ii, jj = torch.nonzero(near & inside, as_tuple=True)
            order = prob[ii, jj].argsort(descending=True)[:5]
            d = self._decode(emb, ii[order], jj[order], sc)
            for k, score in enumerate(prob[ii[order], jj[order]].tolist()):
                m = self._paste(d["masks"][k], d["origin"][k], sc, (ch, cw))
                key = (float(m[int(cy), int(cx)]), score, m, ya, xa)
                if best is None or key[:2] > best[:2]:
                    best = key
        if best is None:
            return empty, 0.0
        _, score, m, ya, xa = best
        empty[ya : ya + m.shape[0], xa : xa + m.shape[1]] = m
        return empty, score


@register(
    "deepmask",
    kind="instance",
    divisible_by=1,
    objects=True,
    training={"patch_size": 128},
    description="DeepMask: dense window masks + objectness over scales, NMS; any object "
    "shape, one model for click-to-segment and automatic proposals.",
)
def build_deepmask(
    *,
    num_classes: int = 2,
    in_channels: int = 1,
    window: int = 48,
    mask_size: int = 24,
    width: int = 16,
    embed_dim: int = 256,
    scales: tuple[float, ...] = (0.5, 1.0, 2.0),
    weights: str | None = None,
) -> nn.Module:
    """Build a :class:`DeepMask` (pads any input size itself). ``weights``: a local safetensors file or ``None``."""
    model = DeepMask(
        in_channels=in_channels,
        num_classes=num_classes,
        window=window,
        mask_size=mask_size,
        width=width,
        embed_dim=embed_dim,
        scales=tuple(scales),
    )
    return load_local(model, weights)
