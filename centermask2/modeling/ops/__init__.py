"""Detection ops with plain-PyTorch reference implementations."""

from .nms import batched_nms, box_iou, nms
from .roi_align import RoIAlign, roi_align

__all__ = ["nms", "batched_nms", "box_iou", "roi_align", "RoIAlign"]
