"""The CAM family beside `gradcam`: Grad-CAM++ (`gradcam-pp`), HiResCAM, LayerCAM and Eigen-CAM on the same
target (one block's norm1 output, prefix tokens left out), as pytorch-grad-cam computes them
(vitscope.methods.cams). Each is the gradcam plugin with another map: the same options, the
same figures (the map of every block on a slider) and the same map contract, so `vitscope
score` scores them like any map. Score-CAM needs the model and is stored in the dump at
capture time (the `scorecam` plugin)."""
from __future__ import annotations

from vitscope.plugins.gradcam import POINT, GradCam


class GradCamPlusPlus(GradCam):
    """Grad-CAM++ (Chattopadhay et al. 2018) on the patch tokens of one block's norm1 output."""
    name, label, stem = "gradcam-pp", "Grad-CAM++", "gradcam-pp"


class HiResCam(GradCam):
    """HiResCAM (Draelos & Carin 2020): the gradient times the activation, summed over width."""
    name, label, stem = "hirescam", "HiResCAM", "hirescam"


class LayerCam(GradCam):
    """LayerCAM (Jiang et al. 2021): the positive gradient times the activation."""
    name, label, stem = "layercam", "LayerCAM", "layercam"


class EigenCam(GradCam):
    """Eigen-CAM (Muhammad & Yeasin 2020): the first principal component of the activations
    (no gradient: the same map for every class)."""
    name, label, stem = "eigencam", "Eigen-CAM", "eigencam"
    requires = (f"blocks.*.{POINT}",)
