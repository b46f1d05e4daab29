"""Neural-network layers: continuous convolution and the networks built from it."""
