"""Attribution methods shared by several explainers."""

from pyconcepts.attribution.excitation import excitation_backprop
from pyconcepts.attribution.gradcam import GradCAM, grad_cam

__all__ = ["GradCAM", "excitation_backprop", "grad_cam"]
