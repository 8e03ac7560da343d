"""Detection ops with plain-PyTorch reference implementations."""

from .deform_conv import deform_conv2d
from .nms import batched_nms, box_iou, nms
from .roi_align import RoIAlign, roi_align

__all__ = ["nms", "batched_nms", "box_iou", "roi_align", "RoIAlign", "deform_conv2d"]
