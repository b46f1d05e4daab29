"""Point-cloud operators: neighbour search and parametric continuous convolution.

Every op: a public function (validates, documents) -> a private ``torch.autograd.Function``
-> a backend chosen by the tensor's device (Triton on CUDA where installed, PyTorch elsewhere).
Heavy optional libraries (Open3D, Triton) are imported inside the backends that use them.

The functions are imported eagerly, after their submodules: ``pcseg.ops.knn`` is the FUNCTION
(importing a submodule binds the package attribute to the module; importing the function
after it rebinds the name, so every caller gets the same object).
"""

from pcseg.ops.continuous_conv import continuous_conv, continuous_conv_reference
from pcseg.ops.knn import KNNResult, knn

__all__ = ["KNNResult", "continuous_conv", "continuous_conv_reference", "knn"]
