"""Attribution methods shared by several explainers."""

from pyconcepts.attribution.gradcam import GradCAM, grad_cam

__all__ = ["GradCAM", "grad_cam"]
