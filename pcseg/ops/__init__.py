"""Point-cloud operators: neighbour search and parametric continuous convolution.

Every op: a public function (validates, documents) -> a private ``torch.autograd.Function``
-> a backend chosen by the tensor's device (Triton on CUDA where installed, PyTorch elsewhere).
"""

from pcseg.ops.continuous_conv import continuous_conv, continuous_conv_reference
from pcseg.ops.knn import KNNResult, knn

__all__ = ["KNNResult", "continuous_conv", "continuous_conv_reference", "knn"]
